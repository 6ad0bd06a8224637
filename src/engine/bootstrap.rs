//! Cold starts: bringing a fleet back from zero live instances stage by stage, in waves.
//!
//! A fleet that is wanted (some target asks for replicas) but has no ready instance anywhere
//! is cold. Starting everything at once is how it stays down: the API hammers a database
//! that is not up yet, and a thousand instances booting together overload what they share.
//! So a cold start brings each stage up only once the stages it depends on are ready, holds
//! the stages waiting on others at zero, and raises each stage in waves of `wavePercent` of
//! its replicas, the next wave only once the last one is ready and `waveInterval` has
//! passed. When every stage is ready the bootstrap is complete and leaves the replicas to
//! whatever scales them (a ScalingPolicy).
//!
//! Pure: time is unix seconds passed in, sizes are what the caller read. What it must
//! remember between ticks is in [`Progress`], which the operator keeps in status so a
//! restart resumes where it was.

use std::collections::BTreeMap;

use crate::actuators::Size;

/// A stage as the planner needs it.
#[derive(Clone, Debug)]
pub struct Stage {
    pub name: String,
    pub depends_on: Vec<String>,
    /// Replicas each target reaches in this stage.
    pub goals: Vec<i64>,
    /// Percent of a target's goal added per wave (1–100).
    pub wave_percent: i64,
    /// Seconds between waves, at least.
    pub wave_interval: f64,
    /// Seconds after its start by which the stage should be ready.
    pub ready_within: f64,
}

/// Where a policy is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Phase {
    /// Instances are live (or none is wanted): nothing to do.
    #[default]
    Idle,
    Bootstrapping,
    /// The last cold start finished; as idle until the next.
    Complete,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "Idle",
            Phase::Bootstrapping => "Bootstrapping",
            Phase::Complete => "Complete",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "Bootstrapping" => Phase::Bootstrapping,
            "Complete" => Phase::Complete,
            _ => Phase::Idle,
        }
    }
}

/// When a started stage began and last raised a wave (unix seconds).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StageProgress {
    pub started_at: f64,
    pub last_wave_at: f64,
}

/// What a bootstrap remembers between ticks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Progress {
    pub phase: Phase,
    /// Since when the fleet has been bootstrapping (unix seconds).
    pub since: Option<f64>,
    /// Stages started in this bootstrap, by name.
    pub stages: BTreeMap<String, StageProgress>,
}

/// One change of a target's replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub stage: usize,
    pub target: usize,
    pub from: i64,
    pub to: i64,
}

/// What a tick calls for.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub progress: Progress,
    pub steps: Vec<Step>,
    /// Stages being brought up now.
    pub running: Vec<String>,
    /// Stages started and not ready within their `readyWithin`, with how long they have run.
    pub late: Vec<(String, f64)>,
    /// What is going on, in one line.
    pub sentence: String,
}

/// Plans one tick. `sizes[i][j]` is target `j` of stage `i` now; `now` is unix seconds.
pub fn plan(stages: &[Stage], sizes: &[Vec<Size>], progress: &Progress, now: f64) -> Plan {
    let mut plan = Plan {
        progress: progress.clone(),
        steps: Vec::new(),
        running: Vec::new(),
        late: Vec::new(),
        sentence: String::new(),
    };
    let all = || sizes.iter().flatten();
    let live: i64 = all().map(|s| s.ready).sum();
    if plan.progress.phase != Phase::Bootstrapping {
        // Replicas asked for and none ready: cold. Nothing asked for is a fleet turned off on
        // purpose, which a bootstrap must not turn back on.
        if live > 0 || all().all(|s| s.desired <= 0) {
            plan.sentence = format!("{live} instance(s) ready: no cold start");
            return plan;
        }
        plan.progress = Progress { phase: Phase::Bootstrapping, since: Some(now), stages: BTreeMap::new() };
    }

    let ready = |i: usize| stage_ready(&stages[i], &sizes[i]);
    let ready_by_name: BTreeMap<&str, bool> =
        stages.iter().enumerate().map(|(i, s)| (s.name.as_str(), ready(i))).collect();
    if ready_by_name.values().all(|&r| r) {
        let took = now - plan.progress.since.unwrap_or(now);
        plan.sentence = format!("every stage is ready: cold start complete after {}", seconds(took));
        plan.progress = Progress { phase: Phase::Complete, since: None, stages: BTreeMap::new() };
        return plan;
    }

    let mut words = Vec::new();
    for (i, stage) in stages.iter().enumerate() {
        if ready(i) {
            continue;
        }
        let waiting: Vec<&str> = stage
            .depends_on
            .iter()
            .map(String::as_str)
            .filter(|d| !ready_by_name.get(d).copied().unwrap_or(true))
            .collect();
        if !waiting.is_empty() {
            // Held at zero: started before what it needs, it would only hammer it.
            for (j, s) in sizes[i].iter().enumerate() {
                if s.desired > 0 {
                    plan.steps.push(Step { stage: i, target: j, from: s.desired, to: 0 });
                }
            }
            words.push(format!("{} waits for {}", stage.name, waiting.join(", ")));
            continue;
        }
        plan.running.push(stage.name.clone());
        let wave = |goal: i64| ((goal * stage.wave_percent + 99) / 100).max(1);
        let first = !plan.progress.stages.contains_key(&stage.name);
        let due = match plan.progress.stages.get(&stage.name) {
            None => {
                plan.progress.stages.insert(stage.name.clone(), StageProgress { started_at: now, last_wave_at: now });
                true
            }
            Some(p) => {
                if now - p.started_at > stage.ready_within {
                    plan.late.push((stage.name.clone(), now - p.started_at));
                }
                let wave_up = sizes[i].iter().all(|s| s.ready >= s.desired);
                wave_up && now - p.last_wave_at >= stage.wave_interval
            }
        };
        if due {
            let before = plan.steps.len();
            for (j, (s, &goal)) in sizes[i].iter().zip(&stage.goals).enumerate() {
                // The first wave counts from zero, down from whatever was asked for if that
                // was more; each later one adds a wave to what is up.
                let to = if first { wave(goal) } else { s.desired + wave(goal) }.min(goal);
                if to != s.desired {
                    plan.steps.push(Step { stage: i, target: j, from: s.desired, to });
                }
            }
            if plan.steps.len() > before
                && let Some(p) = plan.progress.stages.get_mut(&stage.name)
            {
                p.last_wave_at = now;
            }
        }
        let counts: Vec<String> =
            sizes[i].iter().zip(&stage.goals).map(|(s, g)| format!("{}/{g} ready", s.ready)).collect();
        words.push(format!("{} starting ({})", stage.name, counts.join(", ")));
    }
    plan.sentence = format!("cold start: {}", words.join("; "));
    plan
}

/// Whether every target of `stage` (sized `sizes`) has its goal's replicas ready.
fn stage_ready(stage: &Stage, sizes: &[Size]) -> bool {
    sizes.iter().zip(&stage.goals).all(|(s, &goal)| s.ready >= goal)
}

/// Whether the stages clients need are ready: those named in `needed` (every stage when it is
/// empty) and the stages they depend on, directly or not. A name that is no stage's names
/// nothing (validation refuses it).
pub fn needed_ready(stages: &[Stage], sizes: &[Vec<Size>], needed: &[String]) -> bool {
    let index = |name: &str| stages.iter().position(|s| s.name == name);
    let mut todo: Vec<usize> =
        if needed.is_empty() { (0..stages.len()).collect() } else { needed.iter().filter_map(|n| index(n)).collect() };
    let mut seen = vec![false; stages.len()];
    while let Some(i) = todo.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        if !stage_ready(&stages[i], &sizes[i]) {
            return false;
        }
        todo.extend(stages[i].depends_on.iter().filter_map(|d| index(d)));
    }
    true
}

fn seconds(secs: f64) -> crate::api::Duration {
    crate::api::Duration::from_secs(secs.round().max(0.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `database` (pgbouncer ×2, all at once) then `api` (×12 in waves of 25%, 30 s apart).
    fn stages() -> Vec<Stage> {
        vec![
            Stage {
                name: "database".into(),
                depends_on: vec![],
                goals: vec![2],
                wave_percent: 100,
                wave_interval: 30.0,
                ready_within: 300.0,
            },
            Stage {
                name: "api".into(),
                depends_on: vec!["database".into()],
                goals: vec![12],
                wave_percent: 25,
                wave_interval: 30.0,
                ready_within: 600.0,
            },
        ]
    }

    fn size(desired: i64, ready: i64) -> Size {
        Size { desired, ready }
    }

    #[test]
    fn the_stages_clients_need_are_the_named_ones_and_what_they_depend_on() {
        let mut st = stages();
        st.push(Stage { name: "workers".into(), depends_on: vec!["api".into()], goals: vec![8], ..st[0].clone() });
        let needed = |names: &[&str], ready: [i64; 3]| {
            let sizes = [vec![size(2, ready[0])], vec![size(12, ready[1])], vec![size(8, ready[2])]];
            needed_ready(&st, &sizes, &names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
        };
        // The database and the API up, the workers still starting.
        assert!(needed(&["api"], [2, 12, 3]), "the API and the database it needs are up");
        assert!(!needed(&[], [2, 12, 3]), "by default every stage, the workers too");
        assert!(needed(&[], [2, 12, 8]));
        // The API up but the database it depends on down again: clients would fail.
        assert!(!needed(&["api"], [1, 12, 8]), "a stage the named one depends on counts");
        assert!(!needed(&["api"], [2, 11, 8]), "all of a stage's replicas, not some");
        assert!(needed(&["database"], [2, 0, 0]));
    }

    #[test]
    fn a_live_fleet_or_one_turned_off_is_left_alone() {
        let p = plan(&stages(), &[vec![size(2, 2)], vec![size(12, 0)]], &Progress::default(), 0.0);
        assert_eq!((p.progress.phase, p.steps.len()), (Phase::Idle, 0), "{}", p.sentence);
        let p = plan(&stages(), &[vec![size(0, 0)], vec![size(0, 0)]], &Progress::default(), 0.0);
        assert_eq!((p.progress.phase, p.steps.len()), (Phase::Idle, 0), "nothing asked for: off on purpose");
    }

    #[test]
    fn a_cold_fleet_comes_up_stage_by_stage_in_waves() {
        let st = stages();
        // Everything asked for, nothing ready: the API crash-loops against a database that is down.
        let p = plan(&st, &[vec![size(2, 0)], vec![size(12, 0)]], &Progress::default(), 0.0);
        assert_eq!(p.progress.phase, Phase::Bootstrapping);
        assert_eq!(p.steps, vec![Step { stage: 1, target: 0, from: 12, to: 0 }], "the API waits for the database");
        assert_eq!(p.running, vec!["database"]);
        assert_eq!(p.sentence, "cold start: database starting (0/2 ready); api waits for database");

        // The database is ready: the API's first wave (25% of 12).
        let p = plan(&st, &[vec![size(2, 2)], vec![size(0, 0)]], &p.progress, 40.0);
        assert_eq!(p.steps, vec![Step { stage: 1, target: 0, from: 0, to: 3 }]);
        // Not ready yet: no second wave, however long.
        let p = plan(&st, &[vec![size(2, 2)], vec![size(3, 1)]], &p.progress, 100.0);
        assert!(p.steps.is_empty(), "{:?}", p.steps);
        // Ready, but within the interval of the last wave: wait.
        let waited = plan(&st, &[vec![size(2, 2)], vec![size(3, 3)]], &p.progress, 60.0);
        assert!(waited.steps.is_empty());
        let p = plan(&st, &[vec![size(2, 2)], vec![size(3, 3)]], &p.progress, 110.0);
        assert_eq!(p.steps, vec![Step { stage: 1, target: 0, from: 3, to: 6 }]);
        let p = plan(&st, &[vec![size(2, 2)], vec![size(6, 6)]], &p.progress, 140.0);
        let p = plan(&st, &[vec![size(2, 2)], vec![size(9, 9)]], &p.progress, 170.0);
        assert_eq!(p.steps, vec![Step { stage: 1, target: 0, from: 9, to: 12 }], "the last wave stops at the goal");

        let p = plan(&st, &[vec![size(2, 2)], vec![size(12, 12)]], &p.progress, 200.0);
        assert_eq!(p.progress.phase, Phase::Complete);
        assert_eq!(p.sentence, "every stage is ready: cold start complete after 3m20s");
        let p = plan(&st, &[vec![size(2, 2)], vec![size(20, 20)]], &p.progress, 300.0);
        assert!(p.steps.is_empty(), "once complete, replicas are whatever scales them");
    }

    #[test]
    fn a_stage_not_ready_in_time_is_late_and_progress_survives_a_restart() {
        let st = stages();
        let p = plan(&st, &[vec![size(2, 0)], vec![size(0, 0)]], &Progress::default(), 0.0);
        let p = plan(&st, &[vec![size(2, 1)], vec![size(0, 0)]], &p.progress, 301.0);
        assert_eq!(p.late, vec![("database".to_owned(), 301.0)]);
        // A new operator with only what status kept: the same plan.
        let again = plan(&st, &[vec![size(2, 1)], vec![size(0, 0)]], &p.progress.clone(), 301.0);
        assert_eq!(again, p);
    }

    proptest::proptest! {
        #[test]
        fn a_bootstrap_never_asks_for_more_than_a_goal_nor_starts_a_stage_before_its_dependencies(
            ticks in proptest::collection::vec((0i64..15, 0i64..15, 0i64..4, 0i64..15), 1..30),
        ) {
            let st = stages();
            let mut progress = Progress::default();
            for (n, (api_desired, api_ready, db_ready, _)) in ticks.into_iter().enumerate() {
                let sizes = [vec![size(2, db_ready)], vec![size(api_desired, api_ready.min(api_desired))]];
                let p = plan(&st, &sizes, &progress, n as f64 * 40.0);
                for s in &p.steps {
                    proptest::prop_assert!(s.to <= st[s.stage].goals[s.target] && s.to >= 0);
                    if s.stage == 1 && s.to > 0 {
                        proptest::prop_assert!(db_ready >= 2, "api raised while the database was not ready");
                    }
                }
                progress = p.progress;
            }
        }
    }
}
