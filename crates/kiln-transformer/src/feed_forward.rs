//! diffusers' `FeedForward(dim, dim_out=dim, activation_fn="gelu-approximate")`
//! (`models/attention.py`, `models/activations.py`): `GELU(dim, 4·dim, approximate="tanh")` (a
//! projection then the tanh GELU), dropout, a projection back. The keys `net.0.proj.*` and
//! `net.2.*` are mirrored by a tuple whose middle element holds no parameters.

use burn::prelude::*;
use burn::tensor::activation::gelu_approximate;
use kiln_nn::{InferenceDropout, Linear, LinearConfig};

/// `GELU(dim_in, dim_out, approximate="tanh")`: `gelu_tanh(proj(x))`.
#[derive(Module, Debug)]
pub struct GeluTanh {
    pub proj: Linear,
}

/// `FeedForward` with the tanh GELU and `mult = 4`.
#[derive(Module, Debug)]
pub struct FeedForward {
    pub net: (GeluTanh, InferenceDropout, Linear),
}

impl FeedForward {
    pub fn new(dim: usize, device: &Device) -> Self {
        let inner = 4 * dim;
        Self {
            net: (
                GeluTanh { proj: LinearConfig::new(dim, inner).init(device) },
                InferenceDropout { p: 0.0 },
                LinearConfig::new(inner, dim).init(device),
            ),
        }
    }

    /// # Shapes
    /// - x: `[batch, seq, dim]` → same shape
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.net.2.forward(gelu_approximate(self.net.0.proj.forward(x)))
    }
}
