//! Sharding a golden set over CI runners: `--shard I/N` runs every N-th prompt starting at the I-th (round-robin
//! in set order, so shards differ in size by at most one prompt and the split depends only on the set), and
//! `merge-reports` puts the shards back in set order. Each shard report carries the digest of the whole set, so
//! reports of different sets or splits are never merged.

use serde::{Deserialize, Serialize};

use super::golden::GoldenSet;

/// Which part of the set a run covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// 1-based shard number.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
}

/// What a shard report records about the split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// 1-based shard number.
    pub index: usize,
    /// Number of shards.
    pub count: usize,
    /// Prompts in the whole set.
    pub set_prompts: usize,
    /// Digest of the whole set (`set_digest`).
    pub set_digest: String,
}

impl std::str::FromStr for Shard {
    type Err = String;

    /// `I/N` with 1 ≤ I ≤ N.
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("--shard `{s}`: give I/N with 1 ≤ I ≤ N, e.g. 2/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<usize>().map_err(|_| bad())?,
            n.trim().parse::<usize>().map_err(|_| bad())?,
        );
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Whether the prompt at `position` (0-based, in set order) belongs to this shard.
    pub fn holds(&self, position: usize) -> bool {
        position % self.count == self.index - 1
    }

    /// This shard's prompts, in set order, and what the report must record about the split. Refused when the
    /// shard would be empty (more shards than prompts).
    pub fn select(&self, set: &GoldenSet) -> Result<(GoldenSet, ShardInfo), String> {
        if self.index > set.prompts.len() {
            return Err(format!(
                "--shard {self}: the set has only {} prompt(s), so shard {} would be empty; use at most {} shards",
                set.prompts.len(),
                self.index,
                set.prompts.len()
            ));
        }
        let prompts = (set.prompts.iter().enumerate())
            .filter(|(i, _)| self.holds(*i))
            .map(|(_, p)| p.clone())
            .collect();
        let info = ShardInfo {
            index: self.index,
            count: self.count,
            set_prompts: set.prompts.len(),
            set_digest: set_digest(set),
        };
        Ok((GoldenSet { prompts }, info))
    }
}

/// Where the `k`-th prompt (0-based) of shard `index` (1-based) of `count` sits in the whole set.
pub fn set_position(index: usize, count: usize, k: usize) -> usize {
    k * count + index - 1
}

/// A digest of what the set asks (ids, kinds, texts, token budgets, expectations, limits — not where the files
/// were), so shards run from checkouts at different paths still match: FNV-1a 64 over the canonical JSON. It
/// detects accidental mismatches; it is not a cryptographic hash.
pub fn set_digest(set: &GoldenSet) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in &set.prompts {
        let canonical = serde_json::json!([p.id, p.kind, p.text, p.max_tokens, p.expect, p.limits]);
        for b in canonical.to_string().bytes().chain([b'\n']) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("fnv1a64:{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::golden::{
        Expectations, GoldenPrompt, PromptKind, PromptLimits, PromptText,
    };

    fn set(n: usize) -> GoldenSet {
        GoldenSet {
            prompts: (0..n)
                .map(|i| GoldenPrompt {
                    id: format!("p{i}"),
                    kind: PromptKind::Control,
                    text: PromptText::Raw(format!("prompt {i}")),
                    max_tokens: None,
                    expect: Expectations::default(),
                    limits: PromptLimits::default(),
                    source: format!("a.jsonl:{}", i + 1),
                    tags: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn shards_partition_the_set_round_robin_and_positions_invert_the_split() {
        let s = set(10);
        let mut seen = vec![0; 10];
        for index in 1..=3 {
            let shard = Shard { index, count: 3 };
            let (part, info) = shard.select(&s).unwrap();
            assert_eq!((info.set_prompts, &info.set_digest), (10, &set_digest(&s)));
            for (k, p) in part.prompts.iter().enumerate() {
                let at = set_position(index, 3, k);
                assert_eq!(p.id, format!("p{at}"));
                seen[at] += 1;
            }
        }
        assert_eq!(seen, vec![1; 10], "every prompt in exactly one shard");
        let sizes: Vec<usize> = (1..=3)
            .map(|i| {
                Shard { index: i, count: 3 }
                    .select(&s)
                    .unwrap()
                    .0
                    .prompts
                    .len()
            })
            .collect();
        assert_eq!(sizes, [4, 3, 3]);
    }

    #[test]
    fn shard_syntax_and_empty_shards_are_refused_with_the_rule() {
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        for bad in ["0/4", "5/4", "2", "a/4", "2/0", ""] {
            let e = bad.parse::<Shard>().unwrap_err();
            assert_eq!(
                e,
                format!("--shard `{bad}`: give I/N with 1 ≤ I ≤ N, e.g. 2/4")
            );
        }
        let e = Shard { index: 3, count: 3 }.select(&set(2)).unwrap_err();
        assert_eq!(
            e,
            "--shard 3/3: the set has only 2 prompt(s), so shard 3 would be empty; use at most 2 shards"
        );
    }

    #[test]
    fn digest_ignores_file_paths_but_not_content() {
        let a = set(3);
        let mut moved = a.clone();
        moved.prompts[1].source = "/elsewhere/a.jsonl:2".into();
        assert_eq!(set_digest(&a), set_digest(&moved));
        let mut edited = a.clone();
        edited.prompts[1].text = PromptText::Raw("prompt 1!".into());
        assert_ne!(set_digest(&a), set_digest(&edited));
        let mut reordered = a.clone();
        reordered.prompts.swap(0, 1);
        assert_ne!(set_digest(&a), set_digest(&reordered));
    }
}
