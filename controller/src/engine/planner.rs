//! The rollout planner: a pure function of the plan and the hosts' states that says what to do
//! next. The deploy loop executes its actions and feeds back the new states; nothing here touches
//! the network, so every strategy and failure path is unit-tested.
//!
//! * `parallel`: one batch; every host is staged before any is activated.
//! * `serial`: one host per batch. `batch`: N hosts or N% per batch (rounded up).
//! * `canary` hosts go first, as their own batch.
//! * Each batch is staged, activated and health-checked before the next one starts; the loop
//!   waits `delay_secs` between batches.
//! * More than `max_failures` failed hosts (or a cancel) stops the rollout: staged (or
//!   interrupted) releases are aborted and, with `auto_rollback`, every activated host goes back
//!   to its previous release.
//! * Every outcome is decided here from what each host reports, including cleanups that failed:
//!   an abort or a rollback that did not happen leaves the fleet `Incomplete`, never "done".

use std::collections::BTreeMap;

use slipway_common::config::{BatchSize, Strategy};

/// Where one host is in the rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostState {
    Pending,
    Staged,
    Activated,
    Healthy,
    Failed {
        activated: bool,
    },
    /// An upload stopped half-way (cancel): whether the host staged is unknown, so it is aborted.
    Interrupted,
    /// Staged, then its release was removed because the rollout stopped.
    Aborted,
    /// Staged, and removing its release when the rollout stopped failed: it may still be there.
    AbortFailed,
    RolledBack,
    /// Activated, and going back to the previous release failed: it may still run the new one.
    RollbackFailed,
    /// Activated, with no previous release to go back to (a first deploy): it stays on the new one.
    NoRollbackTarget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub batches: Vec<Vec<String>>,
    pub max_failures: u32,
    pub auto_rollback: bool,
    pub health_check: bool,
    /// Stop after the first (canary) batch until a person promotes (cleared then) or aborts.
    pub pause_after_canary: bool,
    /// The step that runs once (`[target] migrate`): while pending, every host is staged first
    /// and nothing flips until it went through; failed, the rollout stops and nothing flips.
    pub migrate: Migrate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migrate {
    /// No such step (none set, skipped, or a rollback).
    None,
    Pending,
    Done,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Finished with failed hosts within `max_failures`.
    Partial,
    /// Stopped by failures; `activated_any`: some host still runs the new release (no
    /// `auto_rollback`), else no host was ever left on it.
    Failed {
        activated_any: bool,
    },
    /// Stopped by failures, and every activated host went back.
    RolledBack,
    /// Stopped by the operator; every staged release was removed and every activated host went
    /// back (with `auto_rollback`).
    Cancelled {
        activated_any: bool,
    },
    /// Stopped, and a cleanup failed: some host may hold a staged release or run the new one.
    Incomplete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Stage {
        batch: usize,
        hosts: Vec<String>,
    },
    Activate(Vec<String>),
    HealthCheck(Vec<String>),
    Abort(Vec<String>),
    RollBack(Vec<String>),
    /// The canary batch went through: wait for `promote` (or `abort`).
    Pause,
    /// Every host staged: run the step that runs once, before any flip.
    Migrate,
    Done(Outcome),
}

/// Split the selected hosts into batches.
pub fn batches(hosts: &[String], canary: &[String], strategy: Strategy, batch: BatchSize) -> Vec<Vec<String>> {
    let (first, rest): (Vec<String>, Vec<String>) = hosts.iter().cloned().partition(|h| canary.contains(h));
    let size = match strategy {
        Strategy::Parallel => rest.len().max(1),
        Strategy::Serial => 1,
        Strategy::Batch => match batch {
            BatchSize::Hosts(n) => n as usize,
            BatchSize::Percent(p) => (hosts.len() * p as usize).div_ceil(100),
        }
        .max(1),
    };
    let mut out = Vec::new();
    if !first.is_empty() {
        out.push(first);
    }
    out.extend(rest.chunks(size).map(<[String]>::to_vec));
    out
}

fn hosts_in(states: &BTreeMap<String, HostState>, names: &[String], want: impl Fn(&HostState) -> bool) -> Vec<String> {
    names.iter().filter(|h| states.get(*h).is_some_and(&want)).cloned().collect()
}

/// What to do next. `stopping` is set when the operator cancelled.
pub fn next(plan: &Plan, states: &BTreeMap<String, HostState>, stopping: bool) -> Action {
    let all: Vec<String> = plan.batches.iter().flatten().cloned().collect();
    let failed = states.values().filter(|s| matches!(s, HostState::Failed { .. })).count() as u32;
    // Aborted and rolled-back hosts only exist once the rollout is stopping: it stays stopped.
    let stopped = states.values().any(|s| matches!(s, HostState::Aborted | HostState::RolledBack))
        || plan.migrate == Migrate::Failed;
    let stopped = stopped
        || states.values().any(|s| {
            matches!(
                s,
                HostState::AbortFailed
                    | HostState::RollbackFailed
                    | HostState::Interrupted
                    | HostState::NoRollbackTarget
            )
        });
    if stopping || stopped || failed > plan.max_failures {
        let staged = hosts_in(states, &all, |s| matches!(s, HostState::Staged | HostState::Interrupted));
        if !staged.is_empty() {
            return Action::Abort(staged);
        }
        let live = hosts_in(states, &all, |s| {
            matches!(s, HostState::Activated | HostState::Healthy | HostState::Failed { activated: true })
        });
        if plan.auto_rollback && !live.is_empty() {
            return Action::RollBack(live);
        }
        if states.values().any(|s| matches!(s, HostState::AbortFailed | HostState::RollbackFailed)) {
            return Action::Done(Outcome::Incomplete);
        }
        let activated_any = !live.is_empty() || states.values().any(|s| *s == HostState::NoRollbackTarget);
        if stopping {
            return Action::Done(Outcome::Cancelled { activated_any });
        }
        if !activated_any && states.values().any(|s| *s == HostState::RolledBack) {
            return Action::Done(Outcome::RolledBack);
        }
        return Action::Done(Outcome::Failed { activated_any });
    }
    // The step that runs once goes after every host staged and before any flip.
    if plan.migrate == Migrate::Pending {
        for (index, batch) in plan.batches.iter().enumerate() {
            let pending = hosts_in(states, batch, |s| *s == HostState::Pending);
            if !pending.is_empty() {
                return Action::Stage { batch: index, hosts: pending };
            }
        }
        return Action::Migrate;
    }
    for (index, batch) in plan.batches.iter().enumerate() {
        let pending = hosts_in(states, batch, |s| *s == HostState::Pending);
        if !pending.is_empty() {
            return Action::Stage { batch: index, hosts: pending };
        }
        let staged = hosts_in(states, batch, |s| *s == HostState::Staged);
        if !staged.is_empty() {
            return Action::Activate(staged);
        }
        let activated = hosts_in(states, batch, |s| *s == HostState::Activated);
        if !activated.is_empty() && plan.health_check {
            return Action::HealthCheck(activated);
        }
        let more = plan.batches[index + 1..].iter().flatten().any(|h| states.get(h) == Some(&HostState::Pending));
        if index == 0 && plan.pause_after_canary && more {
            return Action::Pause;
        }
    }
    Action::Done(if failed == 0 { Outcome::Succeeded } else { Outcome::Partial })
}

/// Apply "every host in `hosts` is now `state`" (the loop's bookkeeping, also used in tests).
pub fn set(states: &mut BTreeMap<String, HostState>, hosts: &[String], state: HostState) {
    for h in hosts {
        states.insert(h.clone(), state.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("web-{i}")).collect()
    }

    #[test]
    fn batching() {
        let h = names(5);
        assert_eq!(batches(&h, &[], Strategy::Parallel, BatchSize::Hosts(1)), vec![h.clone()]);
        assert_eq!(batches(&h, &[], Strategy::Serial, BatchSize::Hosts(3)).len(), 5);
        let b = batches(&h, &[], Strategy::Batch, BatchSize::Hosts(2));
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
        let b = batches(&h, &[], Strategy::Batch, BatchSize::Percent(25));
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1], "25% of 5 rounds up to 2");
        let b = batches(&h, &["web-4".into()], Strategy::Parallel, BatchSize::Hosts(1));
        assert_eq!(
            b,
            vec![vec!["web-4".to_owned()], vec!["web-1".into(), "web-2".into(), "web-3".into(), "web-5".into()]]
        );
    }

    fn plan(batches: Vec<Vec<String>>, max_failures: u32) -> Plan {
        Plan {
            batches,
            max_failures,
            auto_rollback: true,
            health_check: true,
            pause_after_canary: false,
            migrate: Migrate::None,
        }
    }

    #[test]
    fn the_step_that_runs_once_comes_after_every_host_staged_and_before_any_flip() {
        let mut p = plan(batches(&names(3), &[], Strategy::Serial, BatchSize::Hosts(1)), 0);
        p.migrate = Migrate::Pending;
        let mut states = fresh(&p);
        // Serial, yet every batch stages before anything flips.
        for host in names(3) {
            assert_eq!(
                next(&p, &states, false),
                Action::Stage { batch: host[4..].parse::<usize>().unwrap() - 1, hosts: vec![host.clone()] }
            );
            states.insert(host, HostState::Staged);
        }
        assert_eq!(next(&p, &states, false), Action::Migrate);
        // Failed: every staged host is aborted and nothing flipped.
        let mut failed = p.clone();
        failed.migrate = Migrate::Failed;
        assert_eq!(next(&failed, &states, false), Action::Abort(names(3)));
        let aborted: BTreeMap<String, HostState> = names(3).into_iter().map(|h| (h, HostState::Aborted)).collect();
        assert_eq!(next(&failed, &aborted, false), Action::Done(Outcome::Failed { activated_any: false }));
        // Done: the rollout goes on batch by batch.
        p.migrate = Migrate::Done;
        assert_eq!(next(&p, &states, false), Action::Activate(vec!["web-1".into()]));
    }

    fn fresh(p: &Plan) -> BTreeMap<String, HostState> {
        p.batches.iter().flatten().map(|h| (h.clone(), HostState::Pending)).collect()
    }

    /// Run the planner, answering each action with `outcome(action, host) -> new state`.
    fn simulate(p: &Plan, answer: impl Fn(&Action, &str) -> HostState) -> (Vec<Action>, Outcome) {
        let mut states = fresh(p);
        let mut log = Vec::new();
        for _ in 0..100 {
            let action = next(p, &states, false);
            log.push(action.clone());
            let hosts = match &action {
                Action::Done(o) => return (log, o.clone()),
                Action::Pause | Action::Migrate => return (log, Outcome::Partial),
                Action::Stage { hosts, .. } => hosts,
                Action::Activate(h) | Action::HealthCheck(h) | Action::Abort(h) | Action::RollBack(h) => h,
            };
            for h in hosts.clone() {
                let new = answer(&action, &h);
                states.insert(h, new);
            }
        }
        panic!("planner did not finish: {log:?}");
    }

    fn happy(action: &Action, _: &str) -> HostState {
        match action {
            Action::Stage { .. } => HostState::Staged,
            Action::Activate(_) => HostState::Activated,
            Action::HealthCheck(_) => HostState::Healthy,
            Action::Abort(_) => HostState::Aborted,
            Action::RollBack(_) => HostState::RolledBack,
            Action::Pause | Action::Migrate | Action::Done(_) => unreachable!(),
        }
    }

    #[test]
    fn parallel_stages_everything_before_activating_anything() {
        let p = plan(vec![names(3)], 0);
        let (log, outcome) = simulate(&p, happy);
        assert_eq!(outcome, Outcome::Succeeded);
        assert_eq!(
            log,
            vec![
                Action::Stage { batch: 0, hosts: names(3) },
                Action::Activate(names(3)),
                Action::HealthCheck(names(3)),
                Action::Done(Outcome::Succeeded)
            ]
        );
    }

    #[test]
    fn a_stage_failure_aborts_the_others_and_activates_none() {
        let p = plan(vec![names(3)], 0);
        let (log, outcome) = simulate(&p, |a, h| match (a, h) {
            (Action::Stage { .. }, "web-2") => HostState::Failed { activated: false },
            _ => happy(a, h),
        });
        assert_eq!(outcome, Outcome::Failed { activated_any: false });
        assert_eq!(log[1], Action::Abort(vec!["web-1".into(), "web-3".into()]));
        assert!(!log.iter().any(|a| matches!(a, Action::Activate(_))));
    }

    #[test]
    fn health_failure_in_the_second_batch_rolls_back_and_never_touches_the_third() {
        let p = plan(vec![names(2), vec!["web-3".into()], vec!["web-4".into()]], 0);
        let (log, outcome) = simulate(&p, |a, h| match (a, h) {
            (Action::HealthCheck(_), "web-3") => HostState::Failed { activated: true },
            _ => happy(a, h),
        });
        assert_eq!(outcome, Outcome::RolledBack);
        let rollback = log.iter().find_map(|a| if let Action::RollBack(h) = a { Some(h.clone()) } else { None });
        assert_eq!(rollback.unwrap(), vec!["web-1".to_owned(), "web-2".into(), "web-3".into()]);
        assert!(!log.iter().any(|a| matches!(a, Action::Stage { hosts, .. } if hosts.contains(&"web-4".to_owned()))));
    }

    #[test]
    fn failures_within_max_failures_continue() {
        let p = plan(vec![vec!["web-1".into()], vec!["web-2".into()], vec!["web-3".into()]], 1);
        let (_, outcome) = simulate(&p, |a, h| match (a, h) {
            (Action::Stage { .. }, "web-2") => HostState::Failed { activated: false },
            _ => happy(a, h),
        });
        assert_eq!(outcome, Outcome::Partial);
    }

    #[test]
    fn without_auto_rollback_activated_hosts_stay() {
        let p = Plan { auto_rollback: false, ..plan(vec![vec!["web-1".into()], vec!["web-2".into()]], 0) };
        let (log, outcome) = simulate(&p, |a, h| match (a, h) {
            (Action::HealthCheck(_), "web-2") => HostState::Failed { activated: true },
            _ => happy(a, h),
        });
        assert_eq!(outcome, Outcome::Failed { activated_any: true });
        assert!(!log.iter().any(|a| matches!(a, Action::RollBack(_))));
    }

    #[test]
    fn cancel_aborts_staged_and_rolls_back_activated() {
        let p = plan(vec![vec!["web-1".into()], names(3)[1..].to_vec()], 0);
        let mut states = fresh(&p);
        set(&mut states, &["web-1".into()], HostState::Healthy);
        set(&mut states, &["web-2".into()], HostState::Staged);
        assert_eq!(next(&p, &states, true), Action::Abort(vec!["web-2".into()]));
        set(&mut states, &["web-2".into()], HostState::Aborted);
        assert_eq!(next(&p, &states, true), Action::RollBack(vec!["web-1".into()]));
        set(&mut states, &["web-1".into()], HostState::RolledBack);
        assert_eq!(next(&p, &states, true), Action::Done(Outcome::Cancelled { activated_any: false }));
    }

    /// One row of the outcome table: hosts' states after the rollout stopped (or not) -> what the
    /// planner does next.
    fn decide(auto_rollback: bool, stopping: bool, hosts: &[HostState]) -> Action {
        let names = names(hosts.len());
        let p = Plan { auto_rollback, ..plan(vec![names.clone()], 0) };
        let states = names.iter().cloned().zip(hosts.iter().cloned()).collect();
        next(&p, &states, stopping)
    }

    #[test]
    fn the_planner_owns_every_outcome() {
        use HostState::*;
        let web = |n: &[usize]| n.iter().map(|i| format!("web-{i}")).collect::<Vec<_>>();
        let rows: Vec<(bool, bool, Vec<HostState>, Action)> = vec![
            // A rollback that failed is not "rolled back": the fleet is incomplete.
            (true, false, vec![RolledBack, RollbackFailed], Action::Done(Outcome::Incomplete)),
            // An abort that failed likewise.
            (true, false, vec![Failed { activated: false }, AbortFailed], Action::Done(Outcome::Incomplete)),
            // An upload cut by a cancel is aborted, whatever the host made of it.
            (true, true, vec![Interrupted, Staged], Action::Abort(web(&[1, 2]))),
            // A cancel decided by the planner, after every cleanup.
            (true, true, vec![Aborted, Aborted], Action::Done(Outcome::Cancelled { activated_any: false })),
            (false, true, vec![Healthy, Aborted], Action::Done(Outcome::Cancelled { activated_any: true })),
            (true, true, vec![Healthy, Aborted], Action::RollBack(web(&[1]))),
            // No host activated: failed, and nothing was rolled back.
            (
                true,
                false,
                vec![Failed { activated: false }, Aborted],
                Action::Done(Outcome::Failed { activated_any: false }),
            ),
            // Without auto_rollback the activated host stays: failed, with a host on the new release.
            (
                false,
                false,
                vec![Failed { activated: true }, Healthy],
                Action::Done(Outcome::Failed { activated_any: true }),
            ),
            (true, false, vec![RolledBack, RolledBack], Action::Done(Outcome::RolledBack)),
            // A first deploy has nothing to go back to: failed, and the hosts run the new release.
            (
                true,
                false,
                vec![NoRollbackTarget, NoRollbackTarget],
                Action::Done(Outcome::Failed { activated_any: true }),
            ),
            (true, false, vec![RolledBack, NoRollbackTarget], Action::Done(Outcome::Failed { activated_any: true })),
            // A packaging error for a later batch is a host failure like any other: roll back.
            (true, false, vec![Healthy, Failed { activated: false }], Action::RollBack(web(&[1]))),
        ];
        for (auto_rollback, stopping, hosts, expected) in rows {
            assert_eq!(decide(auto_rollback, stopping, &hosts), expected, "{hosts:?} (auto_rollback {auto_rollback})");
        }
    }

    #[test]
    fn a_failed_rollback_ends_incomplete_in_a_simulated_rollout() {
        let p = plan(vec![vec!["web-1".into()], vec!["web-2".into()]], 0);
        let (log, outcome) = simulate(&p, |a, h| match (a, h) {
            (Action::HealthCheck(_), "web-2") => HostState::Failed { activated: true },
            (Action::RollBack(_), "web-1") => HostState::RollbackFailed,
            _ => happy(a, h),
        });
        assert_eq!(outcome, Outcome::Incomplete, "{log:?}");
    }

    #[test]
    fn a_canary_pause_waits_after_the_canary_batch_only() {
        let mut p = plan(vec![vec!["web-1".into()], vec!["web-2".into()], vec!["web-3".into()]], 0);
        p.pause_after_canary = true;
        let (log, _) = simulate(&p, happy);
        assert_eq!(log.last(), Some(&Action::Pause));
        assert_eq!(log.len(), 4, "stage, activate, health of the canary, then pause: {log:?}");
        // Promoted: the flag is cleared and the rest goes on from the canary's states.
        let mut states = fresh(&p);
        set(&mut states, &["web-1".into()], HostState::Healthy);
        p.pause_after_canary = false;
        assert_eq!(next(&p, &states, false), Action::Stage { batch: 1, hosts: vec!["web-2".into()] });
        // Aborted (stopping): the canary goes back, the rest is never touched.
        assert_eq!(next(&p, &states, true), Action::RollBack(vec!["web-1".into()]));
        // One batch only: nothing to pause for.
        let mut one = plan(vec![names(2)], 0);
        one.pause_after_canary = true;
        assert_eq!(simulate(&one, happy).1, Outcome::Succeeded);
    }
}
