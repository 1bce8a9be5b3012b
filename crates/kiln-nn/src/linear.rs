//! PyTorch's `nn.Linear`, its weight in PyTorch's layout `[out_features, in_features]` (burn's own
//! `Linear` keeps `[in, out]`, which would need a transposing pass over every weight at load), run
//! through [`kiln_ops::linear()`]: on the CPU by kiln's kernel, which reads a weight kept in the
//! file's f16/bf16 as it is.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::{Device, Tensor};

/// `nn.Linear(d_input, d_output, bias)`.
#[derive(Config, Debug)]
pub struct LinearConfig {
    pub d_input: usize,
    pub d_output: usize,
    #[config(default = true)]
    pub bias: bool,
}

impl LinearConfig {
    /// Weight and bias drawn as PyTorch's `nn.Linear.reset_parameters` does: uniform on
    /// `±1/√d_input` (what loading then replaces; training starts from it).
    pub fn init(&self, device: &Device) -> Linear {
        let init = Initializer::KaimingUniform { gain: 1.0 / 3f64.sqrt(), fan_out_only: false };
        let weight = init.init_with([self.d_output, self.d_input], Some(self.d_input), Some(self.d_output), device);
        let bias = self.bias.then(|| init.init_with([self.d_output], Some(self.d_input), Some(self.d_output), device));
        Linear { weight, bias }
    }
}

/// `y = x · weightᵀ + bias`.
#[derive(Module, Debug)]
pub struct Linear {
    /// `[d_output, d_input]`, as PyTorch stores it.
    pub weight: Param<Tensor<2>>,
    /// `[d_output]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl Linear {
    /// # Shapes
    /// - x: `[..., d_input]` → `[..., d_output]`
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        kiln_ops::linear(x, self.weight.val(), self.bias.as_ref().map(|b| b.val()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    /// PyTorch's layout and formula: `[[1, 2, 3], [4, 5, 6]]` maps `[1, 0, -1]` to
    /// `[1 − 3, 4 − 6] + bias`; and the init bound `1/√d_input`.
    #[test]
    fn pytorch_layout_and_init() {
        let device = Device::flex();
        let mut l = LinearConfig::new(3, 2).init(&device);
        l.weight = Param::from_tensor(Tensor::from_data(TensorData::new(vec![1f32, 2., 3., 4., 5., 6.], [2, 3]), &device));
        l.bias = Some(Param::from_tensor(Tensor::from_data(TensorData::new(vec![0.5f32, -0.5], [2]), &device)));
        let y = l.forward(Tensor::<2>::from_data(TensorData::new(vec![1f32, 0., -1.], [1, 3]), &device));
        y.into_data().assert_approx_eq::<f32>(&TensorData::new(vec![-1.5f32, -2.5], [1, 2]), Tolerance::default());
        let l = LinearConfig::new(64, 8).init(&device);
        let largest: f32 = l.weight.val().abs().max().into_scalar();
        assert!(largest <= 1.0 / 8.0 + 1e-6, "{largest}");
        let x = Tensor::<3>::random([2, 5, 64], Distribution::Normal(0.0, 1.0), &device);
        assert_eq!(l.forward(x).dims(), [2, 5, 8]);
    }
}
