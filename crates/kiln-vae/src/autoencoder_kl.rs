//! diffusers' `AutoencoderKL` (`models/autoencoders/autoencoder_kl.py`): encoder + `quant_conv`
//! → diagonal Gaussian; `post_quant_conv` + decoder; tiled encode/decode and batch slicing.

use std::path::Path;

use burn::nn::conv::Conv2d;
use burn::prelude::*;
use burn::tensor::DType;
use kiln_nn::{conv2d, load_safetensors, weights_path, LoadError, LoadOptions, Weights};
use kiln_ops::conv2d_forward;

use crate::config::AutoencoderKLConfig;
use crate::error::{ConfigError, VaeError};
use crate::vae::{Decoder, DiagonalGaussianDistribution, Encoder};

/// The Stable Diffusion VAE. Field names mirror diffusers' state-dict keys.
#[derive(Module, Debug)]
pub struct AutoencoderKL {
    pub encoder: Encoder,
    pub decoder: Decoder,
    /// 1×1 conv on the moments (`use_quant_conv`).
    pub quant_conv: Option<Conv2d>,
    /// 1×1 conv on the latents before decoding (`use_post_quant_conv`).
    pub post_quant_conv: Option<Conv2d>,
    #[module(skip)]
    pub config: AutoencoderKLConfig,
    /// Encode/decode in overlapping tiles above one tile (diffusers' `use_tiling`, off by default).
    pub use_tiling: bool,
    /// Encode/decode a batch one sample at a time (diffusers' `use_slicing`, off by default).
    pub use_slicing: bool,
    /// Image tile size (diffusers' `tile_sample_min_size = sample_size`).
    pub tile_sample_min_size: usize,
    /// Latent tile size (`int(sample_size / 2^(len(block_out_channels) - 1))`).
    pub tile_latent_min_size: usize,
    /// Fraction of a tile that overlaps its neighbour (0.25).
    pub tile_overlap_factor: f64,
}

impl AutoencoderKLConfig {
    /// Builds the model with lazily initialised random weights (materialised on first use unless
    /// loaded before). Validates the config first.
    pub fn init(&self, device: &Device) -> Result<AutoencoderKL, ConfigError> {
        self.validate()?;
        let l = self.latent_channels;
        Ok(AutoencoderKL {
            encoder: Encoder::new(self, device),
            decoder: Decoder::new(self, device),
            quant_conv: self.use_quant_conv.then(|| conv2d(2 * l, 2 * l, 1, 1, 0, device)),
            post_quant_conv: self.use_post_quant_conv.then(|| conv2d(l, l, 1, 1, 0, device)),
            config: self.clone(),
            use_tiling: false,
            use_slicing: false,
            tile_sample_min_size: self.tile_sample_min_size(),
            tile_latent_min_size: self.tile_latent_min_size(),
            tile_overlap_factor: 0.25,
        })
    }
}

impl AutoencoderKL {
    /// The stem of a `vae/` folder's weights file: `diffusion_pytorch_model[.<variant>].safetensors`.
    pub const WEIGHTS: &'static str = "diffusion_pytorch_model";

    /// Loads a diffusers `vae/` folder: `config.json` and
    /// `diffusion_pytorch_model[.<variant>].safetensors` on `options.device`, with every float
    /// parameter cast to `options.dtype`. Missing, unused or mis-shaped tensors are errors naming
    /// the file and the tensors.
    pub fn load(dir: &Path, options: &LoadOptions) -> Result<Self, VaeError> {
        let config = AutoencoderKLConfig::from_file(&dir.join("config.json"))?;
        let weights = weights_path(dir, Self::WEIGHTS, options.variant.as_deref())?;
        let model = config
            .init(&options.device)
            .map_err(|e| LoadError::Unsupported { path: dir.join("config.json"), message: e.to_string() })?;
        Ok(load_safetensors(model, &weights, options.dtype, &[], &[])?)
    }

    /// Builds the VAE of `config` on `options.device` and loads `weights` (diffusers' names; a
    /// single-file checkpoint's VAE, renamed) into it, cast to `options.dtype`.
    pub fn load_weights(config: &AutoencoderKLConfig, weights: Weights, options: &LoadOptions) -> Result<Self, VaeError> {
        let model = config.init(&options.device)?;
        Ok(weights.load_into(model, options.dtype, &[])?)
    }

    /// `scaling_factor` from the config (0.18215 SD1/2, 0.13025 SDXL); not applied by encode/decode.
    pub fn scaling_factor(&self) -> f64 {
        self.config.scaling_factor
    }

    /// `shift_factor` from the config (None for SD); not applied by encode/decode.
    pub fn shift_factor(&self) -> Option<f64> {
        self.config.shift_factor
    }

    /// `force_upcast`: the pipeline should run this VAE in f32 even when the rest is f16.
    pub fn force_upcast(&self) -> bool {
        self.config.force_upcast
    }

    /// Spatial factor between image and latents (pipelines' `vae_scale_factor`, 8 for SD).
    pub fn downsample_factor(&self) -> usize {
        self.config.downsample_factor()
    }

    /// The dtype the model computes in, inputs are cast to it ([`kiln_nn::compute_dtype`]).
    pub fn dtype(&self) -> DType {
        kiln_nn::compute_dtype(&self.decoder.conv_in)
    }

    pub fn enable_tiling(&mut self) {
        self.use_tiling = true;
    }

    pub fn disable_tiling(&mut self) {
        self.use_tiling = false;
    }

    pub fn enable_slicing(&mut self) {
        self.use_slicing = true;
    }

    pub fn disable_slicing(&mut self) {
        self.use_slicing = false;
    }

    /// Whether [`encode`](Self::encode) tiles an image of this size (diffusers' `_encode`:
    /// `use_tiling and (width > tile_sample_min_size or height > tile_sample_min_size)`).
    pub fn encode_is_tiled(&self, height: usize, width: usize) -> bool {
        self.use_tiling && (width > self.tile_sample_min_size || height > self.tile_sample_min_size)
    }

    /// Whether [`decode`](Self::decode) tiles latents of this size (diffusers' `_decode`).
    pub fn decode_is_tiled(&self, height: usize, width: usize) -> bool {
        self.use_tiling && (width > self.tile_latent_min_size || height > self.tile_latent_min_size)
    }

    fn to_model_dtype(&self, x: Tensor<4>) -> Tensor<4> {
        let dtype = self.dtype();
        if x.dtype() == dtype { x } else { x.cast(dtype) }
    }

    /// The tile arithmetic, after checking the (public, settable) tile fields.
    fn tile_grid(&self, tile: usize, out_tile: usize) -> Result<TileGrid, VaeError> {
        let overlap = self.tile_overlap_factor;
        if tile == 0 || out_tile == 0 || !(0.0..1.0).contains(&overlap) {
            return Err(VaeError::Input(format!(
                "tiling needs tile sizes >= 1 and 0 <= tile_overlap_factor < 1; got tile_sample_min_size {}, tile_latent_min_size {}, tile_overlap_factor {overlap}",
                self.tile_sample_min_size, self.tile_latent_min_size
            )));
        }
        Ok(TileGrid::new(tile, out_tile, overlap))
    }

    fn check_input(&self, what: &str, x: &Tensor<4>, channels: usize, min_size: usize) -> Result<(), VaeError> {
        let [b, c, h, w] = x.dims();
        if c != channels || b == 0 || h < min_size || w < min_size {
            return Err(VaeError::Input(format!(
                "{what} has shape [{b}, {c}, {h}, {w}]; expected [batch >= 1, {channels}, height >= {min_size}, width >= {min_size}]"
            )));
        }
        Ok(())
    }

    /// Encodes images to the latent distribution (tiled when [`use_tiling`](Self::use_tiling) is
    /// on and the image exceeds a tile; sample by sample when `use_slicing` is on).
    ///
    /// # Shapes
    /// - x: `[batch, in_channels, h, w]`, values in [-1, 1]; h, w ≥ 2^(levels - 1)
    /// - returns a distribution over `[batch, latent_channels, h / f, w / f]` (f = 8 for SD; sizes
    ///   that are not multiples of f round down)
    pub fn encode(&self, x: Tensor<4>) -> Result<DiagonalGaussianDistribution, VaeError> {
        let moments = if self.use_slicing && x.dims()[0] > 1 {
            let b = x.dims()[0];
            let slices =
                (0..b).map(|i| self.encode_moments(x.clone().slice(s![i..i + 1]))).collect::<Result<Vec<_>, _>>()?;
            Tensor::cat(slices, 0)
        } else {
            self.encode_moments(x)?
        };
        Ok(DiagonalGaussianDistribution::from_moments(moments))
    }

    /// diffusers' `_encode`: the moments `[batch, 2 * latent_channels, h / f, w / f]`.
    fn encode_moments(&self, x: Tensor<4>) -> Result<Tensor<4>, VaeError> {
        let [_, _, h, w] = x.dims();
        if self.encode_is_tiled(h, w) {
            return self.tiled_encode_moments(x);
        }
        self.check_input("image", &x, self.config.in_channels, self.encoder.min_input_size())?;
        let enc = self.encoder.forward(self.to_model_dtype(x));
        Ok(match &self.quant_conv {
            Some(q) => conv2d_forward(q, enc),
            None => enc,
        })
    }

    /// Encodes in overlapping tiles of `tile_sample_min_size` pixels regardless of `use_tiling`
    /// (diffusers' `_tiled_encode` + `DiagonalGaussianDistribution`).
    pub fn tiled_encode(&self, x: Tensor<4>) -> Result<DiagonalGaussianDistribution, VaeError> {
        Ok(DiagonalGaussianDistribution::from_moments(self.tiled_encode_moments(x)?))
    }

    fn tiled_encode_moments(&self, x: Tensor<4>) -> Result<Tensor<4>, VaeError> {
        let min = self.encoder.min_input_size();
        self.check_input("image", &x, self.config.in_channels, 1)?;
        let x = self.to_model_dtype(x);
        let grid = self.tile_grid(self.tile_sample_min_size, self.tile_latent_min_size)?;
        let [_, _, h, w] = x.dims();
        // diffusers would fail inside the encoder on an edge tile thinner than the downsampling
        // chain allows; say so up front
        for (dim, size) in [("height", h), ("width", w)] {
            if let Some(t) = grid.tile_sizes(size).into_iter().find(|t| *t < min) {
                return Err(VaeError::Input(format!(
                    "tiled encode: image {dim} {size} leaves an edge tile of {t} px (tiles of {} every {} px); the encoder needs at least {min}",
                    grid.tile, grid.step
                )));
            }
        }
        let tiles = grid.run(&x, |tile| {
            let enc = self.encoder.forward(tile);
            match &self.quant_conv {
                Some(q) => conv2d_forward(q, enc),
                None => enc,
            }
        });
        Ok(grid.blend_and_stitch(tiles))
    }

    /// Decodes latents to images (tiled when [`use_tiling`](Self::use_tiling) is on and the
    /// latents exceed a tile; sample by sample when `use_slicing` is on). The output is diffusers'
    /// `decode(z).sample`: nominally in [-1, 1], not clamped (the pipeline's post-processing maps
    /// it to [0, 1] with a clamp).
    ///
    /// # Shapes
    /// - z: `[batch, latent_channels, h, w]` (already divided by `scaling_factor`)
    /// - returns `[batch, out_channels, h * f, w * f]`
    pub fn decode(&self, z: Tensor<4>) -> Result<Tensor<4>, VaeError> {
        if self.use_slicing && z.dims()[0] > 1 {
            let b = z.dims()[0];
            let slices =
                (0..b).map(|i| self.decode_one(z.clone().slice(s![i..i + 1]))).collect::<Result<Vec<_>, _>>()?;
            Ok(Tensor::cat(slices, 0))
        } else {
            self.decode_one(z)
        }
    }

    /// diffusers' `_decode`.
    fn decode_one(&self, z: Tensor<4>) -> Result<Tensor<4>, VaeError> {
        let [_, _, h, w] = z.dims();
        if self.decode_is_tiled(h, w) {
            return self.tiled_decode(z);
        }
        self.check_input("latents", &z, self.config.latent_channels, 1)?;
        let z = self.to_model_dtype(z);
        let z = match &self.post_quant_conv {
            Some(p) => conv2d_forward(p, z),
            None => z,
        };
        Ok(self.decoder.forward(z))
    }

    /// Decodes in overlapping tiles of `tile_latent_min_size` latents regardless of `use_tiling`
    /// (diffusers' `tiled_decode`).
    ///
    /// # Shapes
    /// - z: `[batch, latent_channels, h, w]` → `[batch, out_channels, h * f, w * f]`
    pub fn tiled_decode(&self, z: Tensor<4>) -> Result<Tensor<4>, VaeError> {
        self.check_input("latents", &z, self.config.latent_channels, 1)?;
        let z = self.to_model_dtype(z);
        let grid = self.tile_grid(self.tile_latent_min_size, self.tile_sample_min_size)?;
        let tiles = grid.run(&z, |tile| {
            let tile = match &self.post_quant_conv {
                Some(p) => conv2d_forward(p, tile),
                None => tile,
            };
            self.decoder.forward(tile)
        });
        Ok(grid.blend_and_stitch(tiles))
    }

    /// diffusers' `forward`: encode, take the posterior's mode (or a sample with the given noise),
    /// decode.
    ///
    /// # Shapes
    /// - x: `[batch, in_channels, h, w]`; noise: like the latents → like x (for h, w multiples of f)
    pub fn forward(&self, x: Tensor<4>, posterior_noise: Option<Tensor<4>>) -> Result<Tensor<4>, VaeError> {
        let posterior = self.encode(x)?;
        let z = match posterior_noise {
            Some(noise) => posterior.sample(noise)?,
            None => posterior.mode(),
        };
        self.decode(z)
    }
}

/// The tile arithmetic shared by diffusers' `_tiled_encode` and `tiled_decode`: input tiles of
/// `tile` starting every `step = int(tile * (1 - overlap))`, output tiles blended over
/// `blend = int(out_tile * overlap)` rows/columns and cropped to `out_tile - blend`.
struct TileGrid {
    tile: usize,
    step: usize,
    blend: usize,
    limit: usize,
}

impl TileGrid {
    fn new(tile: usize, out_tile: usize, overlap: f64) -> Self {
        // Python's int() truncates; the config validation keeps tile sizes >= 1
        let step = ((tile as f64 * (1.0 - overlap)) as usize).max(1);
        let blend = (out_tile as f64 * overlap) as usize;
        Self { tile, step, blend, limit: out_tile - blend }
    }

    /// Sizes of the tiles along a dimension of `size` (`range(0, size, step)`).
    fn tile_sizes(&self, size: usize) -> Vec<usize> {
        (0..size).step_by(self.step).map(|i| self.tile.min(size - i)).collect()
    }

    /// Applies `f` to every tile `x[:, :, i:i+tile, j:j+tile]`, row by row.
    fn run(&self, x: &Tensor<4>, f: impl Fn(Tensor<4>) -> Tensor<4>) -> Vec<Vec<Tensor<4>>> {
        let [b, c, h, w] = x.dims();
        (0..h)
            .step_by(self.step)
            .map(|i| {
                (0..w)
                    .step_by(self.step)
                    .map(|j| {
                        let tile = x.clone().slice([0..b, 0..c, i..(i + self.tile).min(h), j..(j + self.tile).min(w)]);
                        f(tile)
                    })
                    .collect()
            })
            .collect()
    }

    /// diffusers' second loop: blend each tile with the (already blended) tile above and to the
    /// left — `blend_v`/`blend_h` modify the tile in place, so later neighbours see the blended
    /// version — crop it to `limit` and concatenate.
    fn blend_and_stitch(&self, mut rows: Vec<Vec<Tensor<4>>>) -> Tensor<4> {
        let mut result_rows = Vec::with_capacity(rows.len());
        for i in 0..rows.len() {
            let mut result_row = Vec::with_capacity(rows[i].len());
            for j in 0..rows[i].len() {
                let mut tile = rows[i][j].clone();
                if i > 0 {
                    tile = blend(&rows[i - 1][j], tile, self.blend, 2);
                }
                if j > 0 {
                    tile = blend(&rows[i][j - 1], tile, self.blend, 3);
                }
                rows[i][j] = tile.clone();
                let [b, c, h, w] = tile.dims();
                result_row.push(tile.slice([0..b, 0..c, 0..self.limit.min(h), 0..self.limit.min(w)]));
            }
            result_rows.push(Tensor::cat(result_row, 3));
        }
        Tensor::cat(result_rows, 2)
    }
}

/// diffusers' `blend_v` (dim 2) / `blend_h` (dim 3): the first `extent` rows (columns) of `b`
/// become `a[-extent + y] * (1 - y / extent) + b[y] * (y / extent)`.
///
/// # Shapes
/// - a, b: `[batch, channels, h, w]` with equal size along the other spatial dim → like b
fn blend(a: &Tensor<4>, b: Tensor<4>, extent: usize, dim: usize) -> Tensor<4> {
    let extent = extent.min(a.dims()[dim]).min(b.dims()[dim]);
    if extent == 0 {
        return b;
    }
    let device = b.device();
    let dtype = b.dtype();
    // PyTorch multiplies by the Python float rounded to the tensor's compute type
    let w_b: Vec<f32> = (0..extent).map(|y| (y as f64 / extent as f64) as f32).collect();
    let w_a: Vec<f32> = (0..extent).map(|y| (1.0 - y as f64 / extent as f64) as f32).collect();
    let shape = if dim == 2 { [1, 1, extent, 1] } else { [1, 1, 1, extent] };
    let weights = |w: Vec<f32>| Tensor::<4>::from_data(TensorData::new(w, shape), (&device, dtype));
    let [n, c, h, w] = b.dims();
    let a_len = a.dims()[dim];
    let (a_part, b_range) = if dim == 2 {
        let [an, ac, _, aw] = a.dims();
        (a.clone().slice([0..an, 0..ac, a_len - extent..a_len, 0..aw]), [0..n, 0..c, 0..extent, 0..w])
    } else {
        let [an, ac, ah, _] = a.dims();
        (a.clone().slice([0..an, 0..ac, 0..ah, a_len - extent..a_len]), [0..n, 0..c, 0..h, 0..extent])
    };
    let b_part = b.clone().slice(b_range.clone());
    let blended = a_part * weights(w_a) + b_part * weights(w_b);
    b.slice_assign(b_range, blended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    /// `blend` against diffusers' row-by-row loop written out on the host.
    #[test]
    fn blend_matches_the_python_loop() {
        let device = Device::flex();
        let a = Tensor::<4>::random([1, 2, 5, 6], Distribution::Normal(0.0, 1.0), &device);
        let b = Tensor::<4>::random([1, 2, 5, 4], Distribution::Normal(0.0, 1.0), &device);
        for (dim, extent) in [(2, 3), (3, 3), (3, 8), (2, 0)] {
            let (a, b) =
                if dim == 2 { (a.clone().slice([0..1, 0..2, 0..5, 0..4]), b.clone()) } else { (a.clone(), b.clone()) };
            let got: Vec<f32> = blend(&a, b.clone(), extent, dim).try_into_vec_as::<f32>().unwrap();
            let av: Vec<f32> = a.to_data().try_to_vec::<f32>().unwrap();
            let mut want: Vec<f32> = b.to_data().try_to_vec::<f32>().unwrap();
            let [_, c, h, w] = b.dims();
            let [_, _, ah, aw] = a.dims();
            let e = extent.min(if dim == 2 { ah.min(h) } else { aw.min(w) });
            for y in 0..e {
                let (wa, wb) = ((1.0 - y as f64 / e as f64) as f32, (y as f64 / e as f64) as f32);
                for ch in 0..c {
                    for k in 0..if dim == 2 { w } else { h } {
                        let (bi, ai) = if dim == 2 {
                            ((ch * h + y) * w + k, (ch * ah + ah - e + y) * aw + k)
                        } else {
                            ((ch * h + k) * w + y, (ch * ah + k) * aw + aw - e + y)
                        };
                        want[bi] = av[ai] * wa + want[bi] * wb;
                    }
                }
            }
            let diff = got.iter().zip(&want).map(|(g, w)| (g - w).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-6, "dim {dim} extent {extent}: {diff}");
        }
    }

    #[test]
    fn tile_grid_follows_diffusers() {
        // fixture VAE: sample_size 32, two levels -> latent tile 16
        let enc = TileGrid::new(32, 16, 0.25);
        assert_eq!((enc.step, enc.blend, enc.limit), (24, 4, 12));
        assert_eq!(enc.tile_sizes(56), vec![32, 32, 8]);
        let dec = TileGrid::new(16, 32, 0.25);
        assert_eq!((dec.step, dec.blend, dec.limit), (12, 8, 24));
        // SD 1.5: sample_size 512, latent tile 64
        let sd = TileGrid::new(64, 512, 0.25);
        assert_eq!((sd.step, sd.blend, sd.limit), (48, 128, 384));
    }
}
