//! Low-rank updates merged into a loaded module's weights, by parameter name (LoRA), and the
//! exact originals kept to take them out again.
//!
//! A [`Delta`] is `scale ·` an [`Update`] (`up @ down`, LoHa's Hadamard product, LoKr's Kronecker
//! product, a full delta) in PyTorch's layout (`[out, in·kh·kw]`), which kiln's modules keep: a
//! linear layer's weight as it is, a convolution's (`[out, in, kh, kw]`) reshaped.
//! [`merge_deltas`] adds every delta named for a parameter, in the dtype the module computes in
//! (a half-precision weight kept on the CPU becomes f32), on its device, and returns the parameters it changed as they were;
//! [`restore`] puts those back bit for bit. Only the changed parameters are copied.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{DType, Tensor};

/// One matrix of an update, as stored: whole, a product, or a CP (Tucker) decomposition, in
/// PyTorch's layout flattened to 2-D (`[rows, in · kh · kw]`).
#[derive(Debug, Clone)]
pub enum Factor {
    Dense(Tensor<2>),
    /// `a @ b`.
    Product(Tensor<2>, Tensor<2>),
    /// `left @ core[:, :, k] @ right` for every kernel position k, laid out `[out, in·K]` (A1111's
    /// `lyco_helpers.rebuild_cp_decomposition` with `left = up`, `right = down`, and
    /// `make_weight_cp` with `left = waᵀ`, `right = wb`).
    ///
    /// # Shapes
    /// - left `[out, I]`, core `[I, J, K]`, right `[J, in]`
    Cp { left: Tensor<2>, core: Tensor<3>, right: Tensor<2> },
}

impl Factor {
    /// The matrix's shape `[out, in·K]`, or why its parts do not multiply (a file's inner
    /// dimensions that disagree), checked before [`Factor::eval`] would multiply them.
    pub fn checked_dims(&self) -> Result<[usize; 2], String> {
        match self {
            Factor::Dense(m) => Ok(m.dims()),
            Factor::Product(a, b) => {
                let ([out, i], [j, inn]) = (a.dims(), b.dims());
                if i == j { Ok([out, inn]) } else { Err(format!("a [{out}, {i}] factor times a [{j}, {inn}] one")) }
            }
            Factor::Cp { left, core, right } => {
                let ([out, i], [ci, cj, k], [j, inn]) = (left.dims(), core.dims(), right.dims());
                if i == ci && j == cj { Ok([out, inn * k]) } else { Err(format!("a [{out}, {i}] factor, a [{ci}, {cj}, {k}] core and a [{j}, {inn}] factor")) }
            }
        }
    }

    /// The matrix, f32.
    pub fn eval(&self) -> Tensor<2> {
        match self {
            Factor::Dense(m) => m.clone(),
            Factor::Product(a, b) => a.clone().matmul(b.clone()),
            Factor::Cp { left, core, right } => {
                let [i, j, k] = core.dims();
                let [out, _] = left.dims();
                let [_, inn] = right.dims();
                // [K, I, J] @ [K, J, in] → [K, I, in]; [K, out, I] @ that → [K, out, in]
                let cores = core.clone().permute([2, 0, 1]);
                let right = right.clone().unsqueeze_dim::<3>(0).expand([k, j, inn]);
                let left = left.clone().unsqueeze_dim::<3>(0).expand([k, out, i]);
                let m = left.matmul(cores.matmul(right));
                m.permute([1, 2, 0]).reshape([out, inn * k])
            }
        }
    }
}

/// How a weight is updated (A1111's `extensions-builtin/Lora` network modules).
#[derive(Debug, Clone)]
pub enum Update {
    /// LoRA (`up @ down`, with `lora_mid` a CP decomposition) and full deltas (`diff`).
    One(Factor),
    /// LyCORIS LoHa: `w1 ⊙ w2` (`network_hada.py`).
    Hadamard(Factor, Factor),
    /// LyCORIS LoKr: `kron(w1, w2)` (`network_lokr.py`; a convolution's `w2` `[c, d, kh, kw]`
    /// flattened to `[c, d·kh·kw]` gives the same elements).
    Kronecker(Factor, Factor),
}

impl Update {
    /// The update's matrix shape, or why its parts do not fit together (checked before any
    /// product is taken).
    pub fn checked_dims(&self) -> Result<[usize; 2], String> {
        match self {
            Update::One(f) => f.checked_dims(),
            Update::Hadamard(a, b) => {
                let (da, db) = (a.checked_dims()?, b.checked_dims()?);
                if da == db { Ok(da) } else { Err(format!("a Hadamard product of a {da:?} and a {db:?} matrix")) }
            }
            Update::Kronecker(a, b) => {
                let ([p, q], [r, s]) = (a.checked_dims()?, b.checked_dims()?);
                Ok([p * r, q * s])
            }
        }
    }
}

/// One update of a weight, times `scale`.
#[derive(Debug, Clone)]
pub struct Delta {
    pub update: Update,
    pub scale: f64,
}

impl Delta {
    /// The update as one `[out, in·kh·kw]` matrix, f32.
    fn matrix(&self) -> Tensor<2> {
        let m = match &self.update {
            Update::One(f) => f.eval(),
            Update::Hadamard(a, b) => a.eval() * b.eval(),
            Update::Kronecker(a, b) => {
                let (w1, w2) = (a.eval(), b.eval());
                let ([a, b], [c, d]) = (w1.dims(), w2.dims());
                let k = w1.reshape([a, 1, b, 1]) * w2.reshape([1, c, 1, d]);
                k.reshape([a * c, b * d])
            }
        };
        m.mul_scalar(self.scale)
    }
}

/// The parameters a merge changed, as they were before it (flattened), by name.
#[derive(Debug, Default, Clone)]
pub struct Originals {
    params: HashMap<String, (Tensor<1>, Vec<usize>)>,
}

impl Originals {
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }
}

/// Tracks the path of the parameter being visited, as burn-store names it with enum variants
/// skipped (`down_blocks.0.attentions.0.proj_in.weight`).
#[derive(Default)]
struct Path {
    names: Vec<String>,
}

impl Path {
    fn enter(&mut self, name: &str, container: &str) {
        if !container.starts_with("Enum:") {
            self.names.push(name.to_string());
        }
    }

    fn exit(&mut self, container: &str) {
        if !container.starts_with("Enum:") {
            self.names.pop();
        }
    }

    fn current(&self) -> String {
        self.names.join(".")
    }
}

struct Merger<'a> {
    path: Path,
    deltas: &'a HashMap<String, Vec<Delta>>,
    /// The dtype the module computes in (what a merged weight is kept in).
    compute: DType,
    originals: Originals,
    /// Names whose delta did not fit the parameter: `(name, why)`.
    errors: Vec<(String, String)>,
}

impl ModuleMapper for Merger<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.current();
        let Some(deltas) = self.deltas.get(&name) else { return param };
        let mut error = None;
        let mut original = None;
        let param = param.map(|t| {
            let dims = t.dims();
            // PyTorch's layout, which kiln's modules keep: [out, in] for a linear layer, [out, in, kh, kw]
            let torch_dims: Vec<usize> = dims.to_vec();
            let rows = torch_dims[0];
            let cols: usize = torch_dims[1..].iter().product();
            let mut sum: Option<Tensor<2>> = None;
            for d in deltas {
                // shapes first: a file whose factors do not multiply is an error, not a panic
                let shape = match d.update.checked_dims() {
                    Ok(shape) => shape,
                    Err(e) => {
                        error = Some(format!("its factors do not fit together ({e})"));
                        return t;
                    }
                };
                if shape != [rows, cols] {
                    error = Some(format!("an update of shape {shape:?} for a weight of shape {torch_dims:?}"));
                    return t;
                }
                let m = d.matrix();
                sum = Some(match sum {
                    Some(s) => s + m,
                    None => m,
                });
            }
            let Some(sum) = sum else { return t };
            let delta: Tensor<D> = sum.reshape(dims);
            original = Some((t.clone().reshape([dims.iter().product::<usize>()]), dims.to_vec()));
            let (dtype, device) = (t.dtype(), t.device());
            let delta = delta.to_device(&device);
            if dtype == self.compute {
                t + delta.cast(dtype)
            } else {
                // a weight kept in its file's half precision on the CPU while the model computes
                // in f32: the merged weight is f32, as diffusers' with torch_dtype=float32 (the
                // original half-precision one is what `restore` puts back)
                t.cast(self.compute) + delta.cast(self.compute)
            }
        });
        if let Some(e) = error {
            self.errors.push((name.clone(), e));
        }
        if let Some(o) = original {
            self.originals.params.insert(name, o);
        }
        param
    }
}

/// Adds every delta in `deltas` (by parameter name) to `module`'s weights; `compute` is the dtype
/// the module computes in (a merged weight takes it). Returns the module, the changed parameters
/// as they were, and the names whose deltas did not fit (those parameters are left unchanged).
pub fn merge_deltas<M: Module>(module: M, deltas: &HashMap<String, Vec<Delta>>, compute: DType) -> (M, Originals, Vec<(String, String)>) {
    let mut merger = Merger { path: Path::default(), deltas, compute, originals: Originals::default(), errors: Vec::new() };
    let module = module.map(&mut merger);
    (module, merger.originals, merger.errors)
}

struct Restorer {
    path: Path,
    originals: Originals,
}

impl ModuleMapper for Restorer {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.path.exit(container_type);
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.originals.params.remove(&self.path.current()) {
            Some((flat, dims)) => param.map(|_| flat.reshape::<D, _>(<[usize; D]>::try_from(dims).expect("the rank it had"))),
            None => param,
        }
    }
}

/// Puts back the parameters `originals` holds (what [`merge_deltas`] returned), bit for bit.
pub fn restore<M: Module>(module: M, originals: Originals) -> M {
    module.map(&mut Restorer { path: Path::default(), originals })
}

/// The names of `module`'s parameters and their shapes, as PyTorch names and lays them out
/// (a linear layer's weight `[out, in]`, a norm's `weight`/`bias`); reads no data.
pub fn param_names<M: Module>(module: &M) -> Vec<(String, Vec<usize>)> {
    use burn::store::ModuleSnapshot;
    module.collect(None, Some(Box::new(crate::weights::TorchNames::ToTorch)), true).into_iter().map(|t| (t.name.clone(), t.shape.to_vec())).collect()
}
