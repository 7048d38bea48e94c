//! PEFT's per-module LoRA scaling, computed exactly as `LoraLayer.update_layer` does
//! (peft 0.21.2 `tuners/lora/layer.py`: `lora_alpha / math.sqrt(r)` with `use_rslora`, else `lora_alpha / r`).

/// The scaling PEFT applies to one module: ΔW = factor() · B·A.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    /// `lora_alpha`, or its `alpha_pattern` override.
    pub alpha: f64,
    /// `r`, or its `rank_pattern` override.
    pub rank: u32,
    /// `use_rslora`: divide by √r instead of r.
    pub rslora: bool,
}

impl Scaling {
    /// The factor, in the same f64 arithmetic as Python.
    pub fn factor(&self) -> f64 {
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
                rslora: false
            }
            .factor(),
            2.0
        );
        assert_eq!(
            Scaling {
                alpha: 12.5,
                rank: 8,
                rslora: false
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
                rslora: true
            }
            .factor(),
            4.0
        );
        // Python: 16 / math.sqrt(8) == 5.65685424949238
        assert_eq!(
            Scaling {
                alpha: 16.0,
                rank: 8,
                rslora: true
            }
            .factor(),
            5.656_854_249_492_38
        );
    }
}
