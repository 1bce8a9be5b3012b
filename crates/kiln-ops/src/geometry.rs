//! Shape rules shared by kiln's convolution kernels (the CPU kernel and the GPU im2col route).

use burn::nn::conv::Conv2d;
use burn::nn::PaddingConfig2d;
use burn::tensor::Tensor;

/// The zero padding `(top, left, bottom, right)` of a convolution kiln's own routes can run
/// (stride 1, dilation 1, one group, explicit or no padding, `x`'s channels matching the weight's, a
/// non-empty output: [`cpu_conv`] and [`gpu_conv`]'s im2col), else `None` (burn's op runs it).
pub(crate) fn stride_1_padding(conv: &Conv2d, x: &Tensor<4>) -> Option<(usize, usize, usize, usize)> {
    padding_and_stride(conv, x).and_then(|(padding, stride)| (stride == 1).then_some(padding))
}

/// [`stride_1_padding`] for any stride the same along both axes (the CPU kernel runs SD's
/// stride-2 downsamplers too): the padding and the stride.
pub(crate) fn padding_and_stride(conv: &Conv2d, x: &Tensor<4>) -> Option<((usize, usize, usize, usize), usize)> {
    let [stride, stride_w] = conv.stride;
    if stride != stride_w || stride == 0 || conv.dilation != [1, 1] || conv.groups != 1 {
        return None;
    }
    let (top, left, bottom, right) = match conv.padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => (top, left, bottom, right),
        PaddingConfig2d::Valid => (0, 0, 0, 0),
        PaddingConfig2d::Same => return None,
    };
    let [_, c_in, h, w] = x.dims();
    let [_, c_in_w, kh, kw] = conv.weight.dims();
    (c_in == c_in_w && h + top + bottom >= kh && w + left + right >= kw).then_some(((top, left, bottom, right), stride))
}
