//! The numbers behind the parity checks, from a pack prompt and llama.cpp's logit rows on the same tokens. Pure
//! arithmetic: no llama.cpp, no I/O.
//!
//! - KL(pack ‖ llama.cpp) per position over the recorded tokens plus one tail bucket (the probability mass outside
//!   them on each side), in nats; top-1 agreement (llama.cpp's argmax over the whole vocabulary = the pack's).
//! - The effect of the adapter: per position the logit shift adapter − base on the recorded tokens, centred (a shift
//!   of every logit by the same amount changes no probability), in llama.cpp (Δl) and in training (Δt). The effect
//!   ratio is ⟨Δl, Δt⟩ / ‖Δt‖², the size of llama.cpp's shift along the trained one (2 when α doubled, 1/√r for a
//!   lost rsLoRA factor): unlike ‖Δl‖ / ‖Δt‖ it does not grow with the noise a quantized base adds to each pass
//!   (measured on Gemma 3 270M Q4_K_M, control prompts whose trained shift is small: norm ratio 1.10–1.38, effect
//!   ratio 0.96–1.00). What Δt does not explain of Δl (the residual), measured against the noise of one llama.cpp pass
//!   (the base floor in logits), says whether llama.cpp moves the same logits the same way.

use super::pack::PackPrompt;

/// What the comparison keeps of one llama.cpp logit row.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// log Σ exp(logits) over the whole vocabulary.
    pub log_normaliser: f64,
    /// The logits at the pack's recorded ids for this position, in the pack's order.
    pub logits_at_ids: Vec<f32>,
    /// The argmax over the whole vocabulary.
    pub argmax: i32,
}

/// Summarise a full-vocabulary row at the pack's `ids` (ids beyond the row read as −inf).
pub fn observe(row: &[f32], ids: &[i32]) -> Observed {
    let (max, argmax) =
        row.iter()
            .enumerate()
            .fold((f32::NEG_INFINITY, 0usize), |(m, a), (i, &x)| {
                if x > m { (x, i) } else { (m, a) }
            });
    let sum: f64 = row.iter().map(|&x| f64::from(x - max).exp()).sum();
    Observed {
        log_normaliser: f64::from(max) + sum.ln(),
        logits_at_ids: ids
            .iter()
            .map(|&t| row.get(t as usize).copied().unwrap_or(f32::NEG_INFINITY))
            .collect(),
        argmax: argmax as i32,
    }
}

/// KL and top-1 agreement of one variant over a prompt's positions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Divergence {
    /// Mean over positions of KL(pack ‖ llama.cpp), nats.
    pub kl_mean: f64,
    /// Largest per-position KL.
    pub kl_max: f64,
    /// Fraction of positions where llama.cpp's argmax is the pack's.
    pub top1: f64,
}

/// The adapter's effect in llama.cpp against training, over a prompt's positions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Effect {
    /// ‖Δ‖ in training (centred logit shifts over all positions and recorded tokens).
    pub trained_norm: f64,
    /// ‖Δ‖ in llama.cpp on the same positions and tokens.
    pub llama_norm: f64,
    /// ⟨Δ_llama, Δ_train⟩ / (‖Δ_llama‖·‖Δ_train‖); 0 when either is 0.
    pub cosine: f64,
    /// ‖llama.cpp base − training base‖ on the same cells, centred: the noise each llama.cpp pass carries (the
    /// base floor in logits), against which a small trained shift cannot be judged for direction.
    pub noise_norm: f64,
    /// Recorded (position, token) cells the norms are over.
    pub cells: usize,
}

impl Effect {
    /// ⟨Δl, Δt⟩ / ‖Δt‖²: llama.cpp's shift along the trained one (1 when neither moved, ∞ when only llama.cpp did).
    pub fn ratio(&self) -> f64 {
        match (self.llama_norm, self.trained_norm) {
            (_, t) if t > 0.0 => self.cosine * self.llama_norm / t,
            (l, _) if l > 0.0 => f64::INFINITY,
            _ => 1.0,
        }
    }

    /// ‖Δl‖ / ‖Δt‖ (grows with the noise of each pass; see the module docs).
    pub fn norm_ratio(&self) -> f64 {
        match (self.llama_norm, self.trained_norm) {
            (l, t) if t > 0.0 => l / t,
            (l, _) if l > 0.0 => f64::INFINITY,
            _ => 1.0,
        }
    }

    /// ‖Δl − ratio·Δt‖ ÷ the noise of one llama.cpp pass: how much of llama.cpp's shift the trained shift does not
    /// explain, in units of the base floor. An exact adapter leaves about √2 (the noise of its own pass and the
    /// base's: 1.0–1.7 measured on Gemma 3 270M Q4_K_M); a mis-laid tensor leaves more (2.3–3.9 with one layer
    /// dropped or the Q/K rows permuted). 0 when there is no noise to compare with and nothing unexplained.
    pub fn residual(&self) -> f64 {
        let unexplained = self.llama_norm * (1.0 - self.cosine * self.cosine).max(0.0).sqrt();
        if self.noise_norm > 0.0 {
            unexplained / self.noise_norm
        } else if unexplained > 0.0 {
            f64::INFINITY
        } else {
            0.0
        }
    }

    /// Root-mean-square of the trained shift per cell: how much the adapter moved this prompt's logits.
    pub fn trained_rms(&self) -> f64 {
        if self.cells == 0 {
            0.0
        } else {
            self.trained_norm / (self.cells as f64).sqrt()
        }
    }
}

/// KL(pack ‖ llama.cpp) at one position, over the recorded tokens plus the tail.
fn kl_at(pack_lp: &[f32], llama: &Observed) -> f64 {
    let (mut kl, mut p_mass, mut q_mass) = (0.0f64, 0.0f64, 0.0f64);
    for (&lp, &logit) in pack_lp.iter().zip(&llama.logits_at_ids) {
        let lp = f64::from(lp);
        let lq = f64::from(logit) - llama.log_normaliser;
        let p = lp.exp();
        p_mass += p;
        q_mass += lq.exp();
        if p > 0.0 {
            kl += p * (lp - lq);
        }
    }
    let p_tail = (1.0 - p_mass).max(0.0);
    let q_tail = (1.0 - q_mass).max(1e-12);
    if p_tail > 1e-12 {
        kl += p_tail * (p_tail / q_tail).ln();
    }
    kl.max(0.0)
}

/// Variant `v` of the pack against llama.cpp's rows `observed[p]` for each position `p`.
pub fn divergence(prompt: &PackPrompt, v: usize, observed: &[Observed]) -> Divergence {
    let mut d = Divergence::default();
    for (p, obs) in observed.iter().enumerate().take(prompt.positions) {
        let lps = prompt.logprobs(v, p);
        let kl = kl_at(lps, obs);
        d.kl_mean += kl;
        d.kl_max = d.kl_max.max(kl);
        let pack_top = lps
            .iter()
            .enumerate()
            .fold((f32::NEG_INFINITY, 0usize), |(m, a), (i, &x)| {
                if x > m { (x, i) } else { (m, a) }
            })
            .1;
        d.top1 += f64::from(u8::from(prompt.ids(p)[pack_top] == obs.argmax));
    }
    let n = observed.len().min(prompt.positions).max(1) as f64;
    d.kl_mean /= n;
    d.top1 /= n;
    d
}

/// The centred shift adapter − base at one position (logits = log-prob + normaliser).
fn shift(adapter: impl Iterator<Item = f64>, base: impl Iterator<Item = f64>) -> Vec<f64> {
    let d: Vec<f64> = adapter.zip(base).map(|(a, b)| a - b).collect();
    let mean = d.iter().sum::<f64>() / d.len().max(1) as f64;
    d.into_iter().map(|x| x - mean).collect()
}

/// The effect of pack variant `adapter` (against pack variant `base`) vs llama.cpp's rows at the same scale
/// (`llama_adapter`) and at the base (`llama_base`).
pub fn effect(
    prompt: &PackPrompt,
    base: usize,
    adapter: usize,
    llama_base: &[Observed],
    llama_adapter: &[Observed],
) -> Effect {
    let (mut tt, mut ll, mut tl, mut nn, mut cells) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0usize);
    for p in 0..prompt
        .positions
        .min(llama_base.len())
        .min(llama_adapter.len())
    {
        let (lb, la) = (
            prompt.log_normaliser(base, p),
            prompt.log_normaliser(adapter, p),
        );
        let trained = shift(
            prompt
                .logprobs(adapter, p)
                .iter()
                .map(|&x| f64::from(x) + f64::from(la)),
            prompt
                .logprobs(base, p)
                .iter()
                .map(|&x| f64::from(x) + f64::from(lb)),
        );
        let llama = shift(
            llama_adapter[p].logits_at_ids.iter().map(|&x| f64::from(x)),
            llama_base[p].logits_at_ids.iter().map(|&x| f64::from(x)),
        );
        let noise = shift(
            llama_base[p].logits_at_ids.iter().map(|&x| f64::from(x)),
            prompt
                .logprobs(base, p)
                .iter()
                .map(|&x| f64::from(x) + f64::from(lb)),
        );
        for ((t, l), n) in trained.iter().zip(&llama).zip(&noise) {
            if t.is_finite() && l.is_finite() && n.is_finite() {
                tt += t * t;
                ll += l * l;
                tl += t * l;
                nn += n * n;
                cells += 1;
            }
        }
    }
    let (trained_norm, llama_norm) = (tt.sqrt(), ll.sqrt());
    Effect {
        trained_norm,
        llama_norm,
        cosine: if trained_norm > 0.0 && llama_norm > 0.0 {
            tl / (trained_norm * llama_norm)
        } else {
            0.0
        },
        noise_norm: nn.sqrt(),
        cells,
    }
}

/// First position where two token sequences differ (or where the shorter ends), `None` when equal.
pub fn first_difference(a: &[i32], b: &[i32]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(ids: Vec<i32>, lps: Vec<Vec<f32>>, lse: Vec<f32>) -> PackPrompt {
        let width = ids.len();
        PackPrompt {
            id: "p".into(),
            kind: "target".into(),
            source: super::super::pack::PromptSource::Raw("x".into()),
            rendered: "x".into(),
            prompt_tokens: vec![1],
            base_continuation: vec![5],
            adapter_continuation: vec![5],
            positions: 1,
            width,
            token_ids: ids,
            logprobs: lps.concat(),
            log_normaliser: lse,
        }
    }

    fn log_softmax(x: &[f32]) -> (Vec<f32>, f32) {
        let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let lse = m + x.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
        (x.iter().map(|v| v - lse).collect(), lse)
    }

    #[test]
    fn identical_rows_have_zero_kl_and_full_agreement() {
        let row = [0.5f32, 2.0, -1.0, 0.0];
        let (lp, lse) = log_softmax(&row);
        let p = prompt(
            vec![1, 0, 3, 2],
            vec![vec![lp[1], lp[0], lp[3], lp[2]]],
            vec![lse],
        );
        let d = divergence(&p, 0, &[observe(&row, p.ids(0))]);
        assert!(d.kl_mean < 1e-7, "{d:?}");
        assert_eq!(d.top1, 1.0);
    }

    #[test]
    fn tail_mass_counts_in_the_kl() {
        // The pack recorded only token 1; llama.cpp moved mass from the tail onto it.
        let train = [0.0f32, 1.0, 0.0, 0.0];
        let (lp, lse) = log_softmax(&train);
        let p = prompt(vec![1], vec![vec![lp[1]]], vec![lse]);
        let llama = [0.0f32, 3.0, 0.0, 0.0];
        let d = divergence(&p, 0, &[observe(&llama, p.ids(0))]);
        // Exact KL over the whole vocabulary equals the 2-bucket KL here, because the tail is uniform on both sides.
        let (lq, _) = log_softmax(&llama);
        let exact: f64 = (0..4)
            .map(|i| f64::from(lp[i]).exp() * f64::from(lp[i] - lq[i]))
            .sum();
        assert!((d.kl_mean - exact).abs() < 1e-6, "{} vs {exact}", d.kl_mean);
    }

    #[test]
    fn doubled_shift_reads_as_ratio_two_with_cosine_one() {
        let base = [0.0f32, 1.0, 2.0, 0.5];
        let delta = [0.3f32, -0.2, 0.4, 0.0];
        let adapted: Vec<f32> = base.iter().zip(&delta).map(|(b, d)| b + d).collect();
        let doubled: Vec<f32> = base
            .iter()
            .zip(&delta)
            .map(|(b, d)| b + 2.0 * d + 7.0)
            .collect();
        let ids = vec![2, 1, 3, 0];
        let pick = |lp: &[f32]| ids.iter().map(|&i| lp[i as usize]).collect::<Vec<f32>>();
        let ((lb, sb), (la, sa)) = (log_softmax(&base), log_softmax(&adapted));
        let mut p = prompt(ids.clone(), vec![pick(&lb), pick(&la)], vec![sb, sa]);
        p.positions = 1;
        let e = effect(
            &p,
            0,
            1,
            &[observe(&base, &ids)],
            &[observe(&doubled, &ids)],
        );
        assert!((e.ratio() - 2.0).abs() < 1e-5, "{e:?}");
        assert!((e.cosine - 1.0).abs() < 1e-6, "{e:?}");
    }

    #[test]
    fn first_difference_finds_position_or_length() {
        assert_eq!(first_difference(&[1, 2, 3], &[1, 2, 3]), None);
        assert_eq!(first_difference(&[1, 2, 3], &[1, 9, 3]), Some(1));
        assert_eq!(first_difference(&[2, 2, 3], &[2, 3]), Some(1));
        assert_eq!(first_difference(&[1, 2], &[1, 2, 3]), Some(2));
    }
}
