//! The one adapter model every reader produces: LoRA pairs in PEFT's orientation (A (r, in), B (out, r)) with
//! their per-module scaling, whatever trainer wrote the file. Planning, writing, verifying and inspecting read
//! only these types, never a trainer's own layout.

/// The element type of a source tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceDtype {
    /// float32.
    F32,
    /// float16.
    F16,
    /// bfloat16.
    BF16,
}

impl SourceDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            SourceDtype::F32 => 4,
            SourceDtype::F16 | SourceDtype::BF16 => 2,
        }
    }
}

/// One tensor of the adapter file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorRef {
    /// The safetensors key.
    pub key: String,
    /// Element type.
    pub dtype: SourceDtype,
    /// Shape (numpy order) in PEFT's orientation: A (r, in), B (out, r).
    pub shape: Vec<usize>,
    /// The file stores the transpose of `shape` (mlx-lm: lora_a (in, r), lora_b (r, out));
    /// `Adapter::tensor_f32` returns the PEFT orientation either way.
    pub transposed: bool,
}

/// A Linear or an Embedding LoRA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PairKind {
    /// `lora_A` (r, in), `lora_B` (out, r).
    Linear,
    /// `lora_embedding_A` (r, vocab), `lora_embedding_B` (hidden, r); ΔE = s·(B·A)ᵀ.
    Embedding,
}

/// How one pair's factors hold its delta: one matrix, or a stack of experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// A (r, in), B (out, r): ΔW = s·B·A.
    Single,
    /// PEFT's `ParamWrapper` on a 3-D expert parameter (peft 0.21.2 `tuners/lora/layer.py`, verified by merging in
    /// PyTorch): A is (E·r, in) and B is (out, E·r). `get_delta_weight` reshapes A to (E, r, in) — expert e owns
    /// the row block e·r..(e+1)·r — and B to (out, r, E) — expert e owns the columns e, E+e, 2E+e, … (interleaved,
    /// not blocked) — then ΔW_e = s·B_e·A_e, shaped (out, in) like the transformers-5 parameter slice
    /// `param[e]` of an (E, out, in) parameter (`gate_up_proj` (E, 2·ff, H), `down_proj` (E, H, ff)).
    PeftExperts {
        /// Experts in the stack.
        n_expert: usize,
    },
    /// mlx-lm's `LoRASwitchLinear` (mlx-lm 0.32.2 `tuner/lora.py`): lora_a (E, r, in) and lora_b (E, out, r), with
    /// ΔW_e = scale·lora_b[e]·lora_a[e]. A is PEFT's row-block layout; B is blocked by expert (expert e's (out, r)
    /// is the e-th block), where PEFT interleaves. The pair's shapes are given as PEFT's (E·r, in) and (out, E·r).
    MlxExperts {
        /// Experts in the stack.
        n_expert: usize,
    },
}

impl Packing {
    /// Experts held (1 for a single matrix).
    pub fn n_expert(self) -> usize {
        match self {
            Packing::Single => 1,
            Packing::PeftExperts { n_expert } | Packing::MlxExperts { n_expert } => n_expert,
        }
    }

    /// Expert `e`'s A (r × in, row-major) out of the whole A as stored.
    pub fn expert_a(self, a: &[f32], rank: usize, in_features: usize, e: usize) -> &[f32] {
        match self {
            Packing::Single => a,
            Packing::PeftExperts { .. } | Packing::MlxExperts { .. } => {
                &a[e * rank * in_features..(e + 1) * rank * in_features]
            }
        }
    }

    /// Expert `e`'s B (out × r, row-major) out of the whole B as stored (out rows of E·r values).
    pub fn expert_b(self, b: &[f32], rank: usize, out_features: usize, e: usize) -> Vec<f32> {
        match self {
            Packing::Single => b.to_vec(),
            Packing::PeftExperts { n_expert } => {
                let cols = rank * n_expert;
                let mut out = Vec::with_capacity(out_features * rank);
                for row in b.chunks_exact(cols).take(out_features) {
                    out.extend((0..rank).map(|k| row[k * n_expert + e]));
                }
                out
            }
            Packing::MlxExperts { .. } => {
                b[e * out_features * rank..(e + 1) * out_features * rank].to_vec()
            }
        }
    }
}

/// The two factors of one adapted module.
#[derive(Debug, Clone)]
pub struct LoraPair {
    /// Module path relative to the base model (what PEFT's pattern matching sees): `model.layers.0.self_attn.q_proj`.
    /// For a `ParamWrapper` pair the path of the module holding the parameter, without PEFT's `base_layer` nesting.
    pub module: String,
    /// The module path as saved (nested ParamWrappers add `.base_layer`), for messages.
    pub saved_as: String,
    /// The targeted `nn.Parameter` (`target_parameters`), once known: `gate_up_proj`, `down_proj`, `weight`.
    pub parameter: Option<String>,
    /// Parameters this pair may belong to, while it is not yet told apart by shape (empty once resolved, and for
    /// module LoRAs).
    pub candidates: Vec<String>,
    /// One matrix or a stack of experts.
    pub packing: Packing,
    /// Linear or embedding.
    pub kind: PairKind,
    /// The A factor.
    pub a: TensorRef,
    /// The B factor.
    pub b: TensorRef,
    /// The rank (per expert), from the shapes and the configuration.
    pub rank: usize,
    /// PEFT's scaling for this module.
    pub scaling: Scaling,
}

/// What one safetensors key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyKind {
    /// A LoRA factor.
    Factor {
        /// The module path.
        module: String,
        /// Linear or embedding.
        kind: PairKind,
        /// True for A, false for B.
        is_a: bool,
    },
    /// A copy of a wrapped base layer (`…base_layer.weight`), saved by PEFT next to embedding LoRAs; not needed.
    BaseLayerCopy,
    /// DoRA's magnitude vector.
    DoraMagnitude,
    /// A LoRA bias (`lora_B.bias`).
    LoraBias,
    /// A trainable-token delta.
    TrainableTokens,
    /// A full weight or bias of the base model (modules_to_save, resized embeddings).
    FullWeight,
    /// Anything else.
    Unknown,
}

impl LoraPair {
    /// The name PEFT matches `rank_pattern`/`alpha_pattern` against: the module, or `module.parameter`.
    pub fn pattern_key(&self) -> String {
        match &self.parameter {
            Some(p) => format!("{}.{p}", self.module),
            None => self.module.clone(),
        }
    }

    /// Input features (columns of A).
    pub fn in_features(&self) -> usize {
        self.a.shape.get(1).copied().unwrap_or(0)
    }

    /// Output features (rows of B).
    pub fn out_features(&self) -> usize {
        self.b.shape.first().copied().unwrap_or(0)
    }

    /// The shape of A (`is_a`) or B as the file stores it (numpy order): PEFT's, its transpose, or mlx-lm's
    /// SwitchLinear stacks (E, r, in) and (E, out, r).
    pub fn stored_shape(&self, is_a: bool) -> Vec<usize> {
        let t = if is_a { &self.a } else { &self.b };
        match self.packing {
            Packing::MlxExperts { n_expert } if is_a => {
                vec![n_expert, self.rank, self.in_features()]
            }
            Packing::MlxExperts { n_expert } => vec![n_expert, self.out_features(), self.rank],
            _ if t.transposed => t.shape.iter().rev().copied().collect(),
            _ => t.shape.clone(),
        }
    }

    /// A stable name for the packing (inspect, manifest): `single`, `peft_experts`, `mlx_experts`.
    pub fn packing_name(&self) -> &'static str {
        match self.packing {
            Packing::Single => "single",
            Packing::PeftExperts { .. } => "peft_experts",
            Packing::MlxExperts { .. } => "mlx_experts",
        }
    }
}

/// The scaling PEFT applies to one module: ΔW = factor() · B·A.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    /// `lora_alpha`, or its `alpha_pattern` override.
    pub alpha: f64,
    /// `r`, or its `rank_pattern` override.
    pub rank: u32,
    /// `use_rslora`: divide by √r instead of r.
    pub rslora: bool,
    /// An absolute multiplier used as is (mlx-lm's `lora_parameters.scale`); `alpha` then holds the equivalent
    /// PEFT alpha (scale·r) for display only. Kept apart because (scale·r)/r is not always scale in floating point.
    pub absolute: Option<f64>,
}

impl Scaling {
    /// The factor, in the same f64 arithmetic as Python.
    pub fn factor(&self) -> f64 {
        if let Some(s) = self.absolute {
            return s;
        }
        let r = f64::from(self.rank);
        if self.rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout PEFT's ParamWrapper.get_delta_weight uses, on index-valued factors (E = 2, r = 2, in = 3, out = 2):
    /// torch: A.reshape(2, 2, 3)[1] = rows 2..4; B.reshape(2, 2, 2)[:, :, 1] = columns 1 and 3.
    #[test]
    fn peft_expert_packing_takes_row_blocks_of_a_and_interleaved_columns_of_b() {
        let p = Packing::PeftExperts { n_expert: 2 };
        let a: Vec<f32> = (0..12).map(|x| x as f32).collect(); // (E·r = 4, in = 3)
        assert_eq!(p.expert_a(&a, 2, 3, 1), &[6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
        let b: Vec<f32> = (0..8).map(|x| x as f32).collect(); // (out = 2, E·r = 4)
        assert_eq!(p.expert_b(&b, 2, 2, 0), vec![0.0, 2.0, 4.0, 6.0]);
        assert_eq!(p.expert_b(&b, 2, 2, 1), vec![1.0, 3.0, 5.0, 7.0]);
    }

    /// mlx-lm's SwitchLinear: torch/mlx lora_a.reshape(E, r, in)[e] and lora_b.reshape(E, out, r)[e] (E = 2, r = 2,
    /// in = 3, out = 2): both are the e-th contiguous block.
    #[test]
    fn mlx_expert_packing_takes_blocks_of_both_factors() {
        let p = Packing::MlxExperts { n_expert: 2 };
        let a: Vec<f32> = (0..12).map(|x| x as f32).collect();
        assert_eq!(p.expert_a(&a, 2, 3, 1), &[6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
        let b: Vec<f32> = (0..8).map(|x| x as f32).collect();
        assert_eq!(p.expert_b(&b, 2, 2, 0), vec![0.0, 1.0, 2.0, 3.0]);
        assert_eq!(p.expert_b(&b, 2, 2, 1), vec![4.0, 5.0, 6.0, 7.0]);
        assert_eq!(p.n_expert(), 2);
    }

    #[test]
    fn plain_is_alpha_over_rank() {
        assert_eq!(
            Scaling {
                alpha: 16.0,
                rank: 8,
                rslora: false,
                absolute: None,
            }
            .factor(),
            2.0
        );
        assert_eq!(
            Scaling {
                alpha: 12.5,
                rank: 8,
                rslora: false,
                absolute: None,
            }
            .factor(),
            1.5625
        );
    }

    #[test]
    fn rslora_is_alpha_over_sqrt_rank() {
        assert_eq!(
            Scaling {
                alpha: 16.0,
                rank: 16,
                rslora: true,
                absolute: None,
            }
            .factor(),
            4.0
        );
        // Python: 16 / math.sqrt(8) == 5.65685424949238
        assert_eq!(
            Scaling {
                alpha: 16.0,
                rank: 8,
                rslora: true,
                absolute: None,
            }
            .factor(),
            5.656_854_249_492_38
        );
    }

    #[test]
    fn absolute_scale_is_used_as_is() {
        // Python: 0.1 * 3 / 3 == 0.10000000000000002, so the equivalent alpha could not carry it exactly.
        let s = Scaling {
            alpha: 0.1 * 3.0,
            rank: 3,
            rslora: false,
            absolute: Some(0.1),
        };
        assert_eq!(s.factor(), 0.1);
        assert_ne!(s.alpha / 3.0, 0.1);
    }
}
