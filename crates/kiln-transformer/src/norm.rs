//! The normalisations of the MMDiT blocks (diffusers `models/normalization.py`): LayerNorm without
//! affine parameters, `RMSNorm` (the qk norm of SD 3.5), and the adaptive norms driven by the
//! timestep + text conditioning: `AdaLayerNormZero` (6 modulations), `SD35AdaLayerNormZeroX`
//! (9, the dual-attention blocks of SD 3.5 Medium) and `AdaLayerNormContinuous` (2, the final
//! norm and the last block's context norm).

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::silu;
use burn::tensor::DType;
use kiln_nn::{Linear, LinearConfig};

/// `F.layer_norm(x, (dim,), eps=eps)` without weight and bias: over the last dimension, biased
/// variance.
///
/// # Shapes
/// - x: `[..., dim]` → same shape
pub fn layer_norm<const D: usize>(x: Tensor<D>, eps: f64) -> Tensor<D> {
    let mean = x.clone().mean_dim(D - 1);
    let centred = x - mean;
    let variance = centred.clone().powi_scalar(2).mean_dim(D - 1);
    centred / variance.add_scalar(eps).sqrt()
}

/// diffusers' `RMSNorm(dim, eps)` with a weight: the variance in float32, the normalised values
/// rounded to the weight's dtype when that is half precision, then scaled.
#[derive(Module, Debug)]
pub struct RmsNorm {
    pub weight: Param<Tensor<1>>,
    #[module(skip)]
    pub eps: f64,
}

impl RmsNorm {
    pub fn new(dim: usize, eps: f64, device: &Device) -> Self {
        Self { weight: Param::from_tensor(Tensor::ones([dim], device)), eps }
    }

    /// # Shapes
    /// - x: `[..., dim]` → same shape
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let weight = self.weight.val();
        let input = x.dtype();
        let x32 = if input == DType::F32 { x } else { x.cast(DType::F32) };
        let variance = x32.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = x32 * variance.add_scalar(self.eps).sqrt().recip();
        let normed = if weight.dtype() == DType::F32 { normed } else { normed.cast(weight.dtype()) };
        normed * weight.unsqueeze::<D>()
    }
}

/// `emb.chunk(n, dim=1)`.
///
/// # Shapes
/// - emb: `[batch, n · dim]` → n × `[batch, dim]`
fn chunks(emb: Tensor<2>, n: usize) -> Vec<Tensor<2>> {
    emb.chunk(n, 1)
}

/// `norm(x) · (1 + scale[:, None]) + shift[:, None]`.
///
/// # Shapes
/// - normed: `[batch, seq, dim]`, scale/shift: `[batch, dim]` → `[batch, seq, dim]`
pub fn modulate(normed: Tensor<3>, scale: Tensor<2>, shift: Tensor<2>) -> Tensor<3> {
    normed * scale.add_scalar(1.0).unsqueeze_dim::<3>(1) + shift.unsqueeze_dim::<3>(1)
}

/// What `AdaLayerNormZero` returns besides the modulated input.
#[derive(Debug, Clone)]
pub struct ZeroModulation {
    pub gate_msa: Tensor<2>,
    pub shift_mlp: Tensor<2>,
    pub scale_mlp: Tensor<2>,
    pub gate_mlp: Tensor<2>,
}

/// `AdaLayerNormZero(dim)` (adaLN-Zero): `linear(silu(emb))` gives shift, scale and gate for the
/// attention and the MLP; the input is LayerNorm'd (eps 1e-6) and modulated for the attention.
#[derive(Module, Debug)]
pub struct AdaLayerNormZero {
    pub linear: Linear,
}

impl AdaLayerNormZero {
    pub fn new(dim: usize, device: &Device) -> Self {
        Self { linear: LinearConfig::new(dim, 6 * dim).init(device) }
    }

    /// # Shapes
    /// - x: `[batch, seq, dim]`, emb: `[batch, dim]` → `[batch, seq, dim]` and the modulations
    pub fn forward(&self, x: Tensor<3>, emb: Tensor<2>) -> (Tensor<3>, ZeroModulation) {
        let mut c = chunks(self.linear.forward(silu(emb)), 6).into_iter();
        let mut next = || c.next().expect("six chunks");
        let (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) = (next(), next(), next(), next(), next(), next());
        let x = modulate(layer_norm(x, 1e-6), scale_msa, shift_msa);
        (x, ZeroModulation { gate_msa, shift_mlp, scale_mlp, gate_mlp })
    }
}

/// `SD35AdaLayerNormZeroX(dim)`: `AdaLayerNormZero` plus a second shift/scale/gate for the
/// image-only attention of the dual-attention (MMDiT-X) blocks.
#[derive(Module, Debug)]
pub struct Sd35AdaLayerNormZeroX {
    pub linear: Linear,
}

impl Sd35AdaLayerNormZeroX {
    pub fn new(dim: usize, device: &Device) -> Self {
        Self { linear: LinearConfig::new(dim, 9 * dim).init(device) }
    }

    /// The modulated input for the joint attention, the modulations, and the input modulated for
    /// the second attention with its gate.
    ///
    /// # Shapes
    /// - x: `[batch, seq, dim]`, emb: `[batch, dim]`
    pub fn forward(&self, x: Tensor<3>, emb: Tensor<2>) -> (Tensor<3>, ZeroModulation, Tensor<3>, Tensor<2>) {
        let mut c = chunks(self.linear.forward(silu(emb)), 9).into_iter();
        let mut next = || c.next().expect("nine chunks");
        let (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) = (next(), next(), next(), next(), next(), next());
        let (shift_msa2, scale_msa2, gate_msa2) = (next(), next(), next());
        let normed = layer_norm(x, 1e-6);
        let x = modulate(normed.clone(), scale_msa, shift_msa);
        let x2 = modulate(normed, scale_msa2, shift_msa2);
        (x, ZeroModulation { gate_msa, shift_mlp, scale_mlp, gate_mlp }, x2, gate_msa2)
    }
}

/// `AdaLayerNormZeroSingle(dim)` (FLUX's single-stream blocks): shift, scale and one gate.
#[derive(Module, Debug)]
pub struct AdaLayerNormZeroSingle {
    pub linear: Linear,
}

impl AdaLayerNormZeroSingle {
    pub fn new(dim: usize, device: &Device) -> Self {
        Self { linear: LinearConfig::new(dim, 3 * dim).init(device) }
    }

    /// # Shapes
    /// - x: `[batch, seq, dim]`, emb: `[batch, dim]` → `[batch, seq, dim]` and the gate `[batch, dim]`
    pub fn forward(&self, x: Tensor<3>, emb: Tensor<2>) -> (Tensor<3>, Tensor<2>) {
        let mut c = chunks(self.linear.forward(silu(emb)), 3).into_iter();
        let mut next = || c.next().expect("three chunks");
        let (shift, scale, gate) = (next(), next(), next());
        (modulate(layer_norm(x, 1e-6), scale, shift), gate)
    }
}

/// `AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6)`: `linear(silu(cond))`
/// gives scale then shift (in that order) for a LayerNorm without affine parameters.
#[derive(Module, Debug)]
pub struct AdaLayerNormContinuous {
    pub linear: Linear,
    #[module(skip)]
    pub eps: f64,
}

impl AdaLayerNormContinuous {
    pub fn new(dim: usize, conditioning_dim: usize, eps: f64, device: &Device) -> Self {
        Self { linear: LinearConfig::new(conditioning_dim, 2 * dim).init(device), eps }
    }

    /// # Shapes
    /// - x: `[batch, seq, dim]`, conditioning: `[batch, conditioning_dim]` → `[batch, seq, dim]`
    pub fn forward(&self, x: Tensor<3>, conditioning: Tensor<2>) -> Tensor<3> {
        let cond = silu(conditioning);
        let cond = if cond.dtype() == x.dtype() { cond } else { cond.cast(x.dtype()) };
        let mut c = chunks(self.linear.forward(cond), 2).into_iter();
        let (scale, shift) = (c.next().expect("scale"), c.next().expect("shift"));
        modulate(layer_norm(x, self.eps), scale, shift)
    }
}
