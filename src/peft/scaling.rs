//! PEFT's per-module LoRA scaling, computed exactly as `LoraLayer.update_layer` does
//! (peft 0.21.2 `tuners/lora/layer.py`: `lora_alpha / math.sqrt(r)` with `use_rslora`, else `lora_alpha / r`),
//! or a trainer's absolute multiplier (mlx-lm's `scale`, which does not depend on the rank).

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
