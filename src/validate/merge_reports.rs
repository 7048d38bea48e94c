//! `lora-validate merge-reports`: the JSON reports of a sharded run (`--shard I/N`) back into one run — prompts and
//! measurements in set order, the engine's self-check and noise floor as the worst shard's — judged again by the same
//! gate, so the verdict is the one an unsharded run gives on the same numbers. One unsharded report passes through
//! unchanged (how CI renders JUnit or Markdown from the one JSON report it ran).
//!
//! Reports are refused, with the file named, when they cannot be one run: another set or split, missing or repeated
//! shards, another base, adapter, limits, scales or batch settings.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::gate::Limits;
use super::golden::{GoldenPrompt, GoldenSet};
use super::results::{
    AloraRun, BaseContinuation, EngineSettings, Partial, PassTiming, PhaseTimings,
    PromptMeasurement, RunMeasurements, Timings,
};
use super::shard::ShardInfo;
use crate::report::{JSON_SCHEMA_VERSION, ReportMeta};

/// Why reports cannot be merged.
#[derive(Debug, thiserror::Error)]
#[error("merge-reports: {0}")]
pub struct MergeError(String);

/// One JSON report as read back: what it ran and what it measured.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The file.
    pub path: PathBuf,
    /// The prompts it ran (a shard's share of the set, or the whole set).
    pub set: GoldenSet,
    /// Its measurements.
    pub run: RunMeasurements,
    /// Base, adapters, tool, the limits it was judged with and which shard it is (None: a whole run).
    pub meta: ReportMeta,
}

/// The parts of the JSON report (golden-prompts/README.md) a merge needs.
#[derive(Deserialize)]
struct Wire {
    schema_version: u32,
    tool: String,
    base: String,
    adapters: Vec<WireAdapter>,
    golden: Option<Vec<GoldenPrompt>>,
    limits: Option<Limits>,
    #[serde(default)]
    shard: Option<ShardInfo>,
    measurements: Vec<PromptMeasurement>,
    base_continuations: Vec<BaseContinuation>,
    engine: WireEngine,
    timings: Timings,
    #[serde(default)]
    partial: Option<Partial>,
    #[serde(default)]
    merged: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    alora: Option<AloraRun>,
    #[serde(default)]
    baseline: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct WireAdapter {
    path: String,
    scale: f32,
}

#[derive(Deserialize)]
struct WireEngine {
    settings: EngineSettings,
    scale_zero_max_abs_logit_delta: f32,
    noise_floor_kl_max: f64,
}

/// Read one JSON report written by `lora-validate --format json`.
pub fn read_report(path: &Path) -> Result<RunReport, MergeError> {
    let err = |m: String| MergeError(format!("`{}`: {m}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let w: Wire = serde_json::from_str(&text)
        .map_err(|e| err(format!("not a lora-validate JSON report ({e})")))?;
    if w.schema_version != JSON_SCHEMA_VERSION {
        return Err(err(format!(
            "schema_version {} (this lora-validate reads {JSON_SCHEMA_VERSION})",
            w.schema_version
        )));
    }
    if let Some(p) = &w.partial {
        return Err(err(format!(
            "a partial run ({}: {} of {} prompts measured); run it again",
            p.reason, p.prompts_done, p.prompts_total
        )));
    }
    if w.merged.is_some() {
        return Err(err(
            "a --merged run: merge-reports does not combine merged-model comparisons; run --merged unsharded"
                .into(),
        ));
    }
    if w.baseline.is_some() {
        return Err(err(
            "a --baseline-adapter run: merge-reports does not combine baseline comparisons; run the baseline gate \
             unsharded"
                .into(),
        ));
    }
    let (Some(golden), Some(limits)) = (w.golden, w.limits) else {
        return Err(err(
            "it lacks `golden` and `limits` (written by an older lora-validate); run it again"
                .into(),
        ));
    };
    Ok(RunReport {
        path: path.to_path_buf(),
        set: GoldenSet { prompts: golden },
        run: RunMeasurements {
            base: w.base_continuations,
            measurements: w.measurements,
            scale_zero_max_abs_logit_delta: w.engine.scale_zero_max_abs_logit_delta,
            noise_floor_kl_max: w.engine.noise_floor_kl_max,
            settings: w.engine.settings,
            timings: w.timings,
            partial: None,
            merged: None,
            alora: w.alora,
        },
        meta: ReportMeta {
            base: w.base,
            adapters: w.adapters.into_iter().map(|a| (a.path, a.scale)).collect(),
            tool_version: w.tool,
            limits,
            shard: w.shard,
            merged: None,
        },
    })
}

/// Merge the reports of every shard of one run (in any order) into one run, or pass one whole run through.
/// The result's `meta.shard` is None.
pub fn merge(mut reports: Vec<RunReport>) -> Result<RunReport, MergeError> {
    if reports.is_empty() {
        return Err(MergeError("give the JSON reports to merge".into()));
    }
    if reports.len() == 1 && reports[0].meta.shard.is_none() {
        return Ok(reports.remove(0));
    }
    if let Some(whole) = reports.iter().find(|r| r.meta.shard.is_none()) {
        return Err(MergeError(format!(
            "`{}` is a whole run, not a shard (--shard I/N); only shard reports are merged",
            whole.path.display()
        )));
    }
    reports.sort_by_key(|r| r.meta.shard.as_ref().map_or(0, |s| s.index));
    let info = first_shard(&reports)?;
    check_consistent(&reports, &info)?;

    let n = info.count;
    let shard_len = |r: &RunReport| r.set.prompts.len();
    let mut prompts = Vec::with_capacity(info.set_prompts);
    let mut base = Vec::with_capacity(info.set_prompts);
    for pos in 0..info.set_prompts {
        let (r, k) = (&reports[pos % n], pos / n);
        let p = r
            .set
            .prompts
            .get(k)
            .ok_or_else(|| malformed(r, "fewer prompts than its shard holds"))?;
        let b = r.run.base.get(k).filter(|b| b.prompt_id == p.id);
        prompts.push(p.clone());
        base.push(
            b.ok_or_else(|| malformed(r, "base continuations out of prompt order"))?
                .clone(),
        );
    }
    let scales = reports[0].run.settings.scales.clone();
    let mut measurements = Vec::with_capacity(info.set_prompts * scales.len());
    for (si, scale) in scales.iter().enumerate() {
        for pos in 0..info.set_prompts {
            let (r, k) = (&reports[pos % n], pos / n);
            let m = r.run.measurements.get(si * shard_len(r) + k);
            let m = m.filter(|m| m.prompt_id == prompts[pos].id && m.scale == *scale);
            measurements.push(
                m.ok_or_else(|| malformed(r, "measurements out of order"))?
                    .clone(),
            );
        }
    }

    let runs: Vec<&RunMeasurements> = reports.iter().map(|r| &r.run).collect();
    let mut settings = runs[0].settings.clone();
    settings.n_ctx = runs.iter().map(|r| r.settings.n_ctx).max().unwrap_or(0);
    let run = RunMeasurements {
        base,
        measurements,
        scale_zero_max_abs_logit_delta: runs
            .iter()
            .map(|r| r.scale_zero_max_abs_logit_delta)
            .fold(0.0, f32::max),
        noise_floor_kl_max: runs
            .iter()
            .map(|r| r.noise_floor_kl_max)
            .fold(0.0, f64::max),
        settings,
        timings: merged_timings(&runs),
        partial: None,
        merged: None,
        alora: merged_alora(&runs, &prompts),
    };
    let first = &reports[0];
    Ok(RunReport {
        path: first.path.clone(),
        set: GoldenSet { prompts },
        run,
        meta: ReportMeta {
            shard: None,
            ..first.meta.clone()
        },
    })
}

/// An aLoRA run's shards: one invocation, the prompts that invoke it (or not) in the whole set's order.
fn merged_alora(runs: &[&RunMeasurements], prompts: &[GoldenPrompt]) -> Option<AloraRun> {
    let first = runs[0].alora.as_ref()?;
    let invoked = |id: &String| {
        runs.iter()
            .filter_map(|r| r.alora.as_ref())
            .any(|a| a.prompts_invoked.contains(id))
    };
    let (yes, no): (Vec<String>, Vec<String>) = prompts
        .iter()
        .map(|p| p.id.clone())
        .partition(|id| invoked(id));
    Some(AloraRun {
        invocation_tokens: first.invocation_tokens.clone(),
        prompts_invoked: yes,
        prompts_not_invoked: no,
    })
}

fn malformed(r: &RunReport, what: &str) -> MergeError {
    MergeError(format!(
        "`{}`: malformed shard report: {what}",
        r.path.display()
    ))
}

fn first_shard(reports: &[RunReport]) -> Result<ShardInfo, MergeError> {
    let Some(info) = reports[0].meta.shard.clone() else {
        return Err(MergeError("no shard report to merge".into()));
    };
    let indices: Vec<usize> = reports
        .iter()
        .filter_map(|r| r.meta.shard.as_ref().map(|s| s.index))
        .collect();
    let expected: Vec<usize> = (1..=info.count).collect();
    if indices != expected {
        let have: Vec<String> = indices
            .iter()
            .map(|i| format!("{i}/{}", info.count))
            .collect();
        return Err(MergeError(format!(
            "a run in {} shards needs each of shards 1..{} exactly once; got {}",
            info.count,
            info.count,
            have.join(", ")
        )));
    }
    Ok(info)
}

fn check_consistent(reports: &[RunReport], info: &ShardInfo) -> Result<(), MergeError> {
    let first = &reports[0];
    for r in reports {
        let differ = |what: &str, a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| {
            MergeError(format!(
                "`{}` and `{}` are not shards of one run: {what} differ ({a:?} vs {b:?})",
                first.path.display(),
                r.path.display()
            ))
        };
        let Some(s) = &r.meta.shard else {
            return Err(MergeError(format!(
                "`{}` is a whole run, not a shard (--shard I/N); only shard reports are merged",
                r.path.display()
            )));
        };
        if (s.count, s.set_prompts, &s.set_digest)
            != (info.count, info.set_prompts, &info.set_digest)
        {
            return Err(differ(
                "prompt sets or splits",
                &(info.count, info.set_prompts, &info.set_digest),
                &(s.count, s.set_prompts, &s.set_digest),
            ));
        }
        if r.meta.base != first.meta.base {
            return Err(differ("bases", &first.meta.base, &r.meta.base));
        }
        if r.meta.adapters != first.meta.adapters {
            return Err(differ("adapters", &first.meta.adapters, &r.meta.adapters));
        }
        if r.meta.limits != first.meta.limits {
            return Err(differ("limits", &first.meta.limits, &r.meta.limits));
        }
        let key = |e: &EngineSettings| (e.scales.clone(), e.max_tokens, e.n_batch, e.n_ubatch);
        if key(&r.run.settings) != key(&first.run.settings) {
            return Err(differ(
                "scales, max tokens or batch sizes",
                &key(&first.run.settings),
                &key(&r.run.settings),
            ));
        }
        let expected_len = (info.set_prompts + info.count - s.index) / info.count;
        if r.set.prompts.len() != expected_len {
            return Err(malformed(
                r,
                &format!(
                    "{} prompts where its shard holds {expected_len}",
                    r.set.prompts.len()
                ),
            ));
        }
    }
    Ok(())
}

/// Timings of the shards together: loads and switches as the slowest shard's, work summed (the total is the sum
/// of the shards' totals — machine time, not the wall time of a parallel CI matrix).
fn merged_timings(runs: &[&RunMeasurements]) -> Timings {
    let t: Vec<&Timings> = runs.iter().map(|r| &r.timings).collect();
    let sum = |f: &dyn Fn(&Timings) -> f64| t.iter().map(|x| f(x)).sum::<f64>();
    let max = |f: &dyn Fn(&Timings) -> f64| t.iter().map(|x| f(x)).fold(0.0, f64::max);
    let switches: usize = t.iter().map(|x| x.adapter_switches).sum();
    let passes = t[0]
        .passes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let same: Vec<&PassTiming> = t.iter().filter_map(|x| x.passes.get(i)).collect();
            let wall: f64 = same.iter().map(|q| q.wall_ms).sum();
            // Rates weighted by each shard's time: tokens over the summed time.
            let rate = |f: &dyn Fn(&PassTiming) -> f64| {
                if wall > 0.0 {
                    same.iter().map(|q| f(q) * q.wall_ms).sum::<f64>() / wall
                } else {
                    0.0
                }
            };
            PassTiming {
                scale: p.scale,
                prompt_tokens_per_s: rate(&|q| q.prompt_tokens_per_s),
                gen_tokens_per_s: rate(&|q| q.gen_tokens_per_s),
                wall_ms: wall,
            }
        })
        .collect();
    Timings {
        model_load_ms: max(&|x| x.model_load_ms),
        adapter_load_ms: max(&|x| x.adapter_load_ms),
        adapter_switch_ms: if switches > 0 {
            sum(&|x| x.adapter_switch_ms * x.adapter_switches as f64) / switches as f64
        } else {
            0.0
        },
        adapter_switch_max_ms: max(&|x| x.adapter_switch_max_ms),
        adapter_switches: switches,
        passes,
        phases: PhaseTimings {
            base_generate_ms: sum(&|x| x.phases.base_generate_ms),
            base_teacher_forced_ms: sum(&|x| x.phases.base_teacher_forced_ms),
            adapted_teacher_forced_ms: sum(&|x| x.phases.adapted_teacher_forced_ms),
            compare_ms: sum(&|x| x.phases.compare_ms),
            adapted_generate_ms: sum(&|x| x.phases.adapted_generate_ms),
            merged_ms: sum(&|x| x.phases.merged_ms),
        },
        total_ms: sum(&|x| x.total_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{self, Format};
    use crate::validate::gate::judge;
    use crate::validate::golden::{Expectations, PromptKind, PromptLimits, PromptText};
    use crate::validate::shard::Shard;

    fn whole_set() -> GoldenSet {
        let prompt = |i: usize| GoldenPrompt {
            id: format!("p{i}"),
            kind: if i % 3 == 2 {
                PromptKind::Target
            } else {
                PromptKind::Control
            },
            text: PromptText::Raw(format!("prompt {i}")),
            max_tokens: None,
            expect: Expectations::default(),
            limits: PromptLimits::default(),
            source: format!("set.jsonl:{}", i + 1),
            tags: vec![],
        };
        GoldenSet {
            prompts: (0..7).map(prompt).collect(),
        }
    }

    /// What the engine would measure for `set` (numbers depend on the prompt and scale only).
    fn measured(set: &GoldenSet, scales: &[f32], load_ms: f64) -> RunMeasurements {
        let kl = |i: usize, s: f32| f64::from(s) * (0.01 + i as f64 / 100.0);
        let index = |id: &str| id[1..].parse::<usize>().unwrap();
        let mut measurements = Vec::new();
        for &s in scales {
            for p in &set.prompts {
                let i = index(&p.id);
                let k = if p.kind == PromptKind::Target {
                    10.0 * kl(i, s)
                } else {
                    kl(i, s)
                };
                measurements.push(PromptMeasurement {
                    prompt_id: p.id.clone(),
                    scale: s,
                    adapted_text: format!("text {i} at {s}"),
                    adapted_tokens: vec![i as i32],
                    first_divergence: (s > 0.0).then_some(1),
                    kl_mean: k,
                    kl_max: 2.0 * k,
                    top1_agreement: 1.0 - k,
                    max_abs_logit_delta: k as f32,
                    positions: 9,
                });
            }
        }
        RunMeasurements {
            base: (set.prompts.iter())
                .map(|p| BaseContinuation {
                    prompt_id: p.id.clone(),
                    prompt_tokens: vec![1, index(&p.id) as i32],
                    text: format!("base {}", p.id),
                    tokens: vec![index(&p.id) as i32],
                })
                .collect(),
            measurements,
            scale_zero_max_abs_logit_delta: 0.0,
            noise_floor_kl_max: 0.0,
            settings: EngineSettings {
                n_ctx: 64 * set.prompts.len() as u32,
                n_batch: 512,
                n_ubatch: 512,
                threads: 2,
                max_tokens: 8,
                scales: scales.to_vec(),
                backend: "CPU (no GPU backend built in or no GPU device found)".into(),
                gpu_layers: 0,
            },
            timings: Timings {
                model_load_ms: load_ms,
                total_ms: 1000.0,
                ..Timings::default()
            },
            partial: None,
            merged: None,
            alora: None,
        }
    }

    fn meta(shard: Option<ShardInfo>) -> ReportMeta {
        ReportMeta {
            base: "base.gguf".into(),
            adapters: vec![("a.gguf".into(), 1.0)],
            tool_version: "lora-validate 0.1.0".into(),
            limits: Limits::default(),
            shard,
            merged: None,
        }
    }

    /// Write a run's JSON report as lora-validate does and read it back.
    fn round_trip(
        dir: &Path,
        name: &str,
        set: &GoldenSet,
        run: &RunMeasurements,
        meta: &ReportMeta,
    ) -> RunReport {
        let verdict = judge(set, run, &meta.limits);
        let path = dir.join(name);
        std::fs::write(
            &path,
            report::render(Format::Json, set, run, &verdict, meta, false),
        )
        .unwrap();
        read_report(&path).unwrap()
    }

    fn shard_reports(dir: &Path, count: usize) -> Vec<RunReport> {
        let scales = [0.0, 0.5, 1.0];
        (1..=count)
            .rev() // any order
            .map(|index| {
                let (part, info) = Shard { index, count }.select(&whole_set()).unwrap();
                let run = measured(&part, &scales, 100.0 * index as f64);
                round_trip(
                    dir,
                    &format!("shard-{index}.json"),
                    &part,
                    &run,
                    &meta(Some(info)),
                )
            })
            .collect()
    }

    #[test]
    fn merged_shards_are_the_whole_run_and_get_its_verdict() {
        let dir = tempfile::tempdir().unwrap();
        let set = whole_set();
        let whole = measured(&set, &[0.0, 0.5, 1.0], 100.0);
        for count in [1, 2, 3, 7] {
            let merged = merge(shard_reports(dir.path(), count)).unwrap();
            assert_eq!(merged.set.prompts, set.prompts, "{count} shards");
            assert_eq!(merged.run.base, whole.base);
            assert_eq!(merged.run.measurements, whole.measurements);
            assert_eq!(merged.meta, meta(None));
            assert_eq!(merged.run.timings.total_ms, 1000.0 * count as f64);
            assert_eq!(merged.run.timings.model_load_ms, 100.0 * count as f64);
            let limits = Limits::default();
            assert_eq!(
                judge(&merged.set, &merged.run, &limits),
                judge(&set, &whole, &limits)
            );
        }
    }

    #[test]
    fn the_worst_shard_self_check_fails_the_merged_run() {
        let dir = tempfile::tempdir().unwrap();
        let mut reports = shard_reports(dir.path(), 3);
        reports[1].run.scale_zero_max_abs_logit_delta = 0.5;
        let merged = merge(reports).unwrap();
        assert_eq!(merged.run.scale_zero_max_abs_logit_delta, 0.5);
        let v = judge(&merged.set, &merged.run, &merged.meta.limits);
        assert!(!v.passed && v.failures.iter().any(|f| f.metric == "self_check"));
    }

    #[test]
    fn a_whole_report_passes_through_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let set = whole_set();
        let whole = measured(&set, &[0.0, 1.0], 5.0);
        let r = round_trip(dir.path(), "whole.json", &set, &whole, &meta(None));
        let merged = merge(vec![r]).unwrap();
        assert_eq!(
            (merged.set, merged.run, merged.meta),
            (set, whole, meta(None))
        );
    }

    fn merge_error(reports: Vec<RunReport>) -> String {
        merge(reports).unwrap_err().to_string()
    }

    #[test]
    fn reports_that_are_not_one_run_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let mut three = shard_reports(dir.path(), 3);
        three.remove(1); // 3/3 and 1/3 left (reversed order)
        assert_eq!(
            merge_error(three),
            "merge-reports: a run in 3 shards needs each of shards 1..3 exactly once; got 1/3, 3/3"
        );

        let mut two = shard_reports(dir.path(), 2);
        two[0].meta.adapters = vec![("other.gguf".into(), 1.0)];
        assert_eq!(
            merge_error(two),
            format!(
                "merge-reports: `{d}/shard-1.json` and `{d}/shard-2.json` are not shards of one run: adapters differ \
                 ([(\"a.gguf\", 1.0)] vs [(\"other.gguf\", 1.0)])"
            )
        );

        let mut other_set = shard_reports(dir.path(), 2);
        let mut edited = whole_set();
        edited.prompts[0].text = PromptText::Raw("edited".into());
        other_set[0].meta.shard = Some(Shard { index: 2, count: 2 }.select(&edited).unwrap().1);
        let e = merge_error(other_set);
        assert!(
            e.contains("are not shards of one run: prompt sets or splits differ"),
            "{e}"
        );

        let whole = round_trip(
            dir.path(),
            "whole.json",
            &whole_set(),
            &measured(&whole_set(), &[1.0], 1.0),
            &meta(None),
        );
        let mut mixed = shard_reports(dir.path(), 2);
        mixed.push(whole);
        assert_eq!(
            merge_error(mixed),
            format!(
                "merge-reports: `{d}/whole.json` is a whole run, not a shard (--shard I/N); only shard reports are merged"
            )
        );
    }

    #[test]
    fn a_report_without_its_prompts_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.json");
        let set = whole_set();
        let run = measured(&set, &[1.0], 1.0);
        let mut json = report::json_value(
            &set,
            &run,
            &judge(&set, &run, &Limits::default()),
            &meta(None),
        );
        json.as_object_mut().unwrap().remove("golden");
        std::fs::write(&path, json.to_string()).unwrap();
        assert_eq!(
            read_report(&path).unwrap_err().to_string(),
            format!(
                "merge-reports: `{}`: it lacks `golden` and `limits` (written by an older lora-validate); run it again",
                path.display()
            )
        );
        std::fs::write(&path, "{}").unwrap();
        let e = read_report(&path).unwrap_err().to_string();
        assert!(
            e.contains("not a lora-validate JSON report (missing field"),
            "{e}"
        );
    }
}
