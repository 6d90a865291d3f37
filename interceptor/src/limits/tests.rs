use super::*;

fn limits(total: u32, per_uid: u32, per_run: u32) -> Limits {
    Limits {
        startup_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(3600),
        max_sessions: total,
        max_sessions_per_uid: per_uid,
        max_sessions_per_run: per_run,
    }
}

#[test]
fn a_uid_at_its_limit_is_refused_while_another_uid_gets_in() {
    let admission = Admission::new(limits(100, 2, 100));
    let a1 = admission.admit(1000, "run-a").expect("first");
    let _a2 = admission.admit(1000, "run-a").expect("second");
    let refused = admission.admit(1000, "run-b").err().expect("third refused");
    assert_eq!(refused.key, "max_sessions_per_uid");
    assert_eq!(
        refused.to_string(),
        "too many sessions for uid 1000: [limits] max_sessions_per_uid is 2"
    );
    let _other = admission.admit(1001, "run-a").expect("another uid");
    assert_eq!(admission.open(), 3);
    // A session that ends gives its place back.
    drop(a1);
    assert_eq!(admission.open(), 2);
    let _again = admission.admit(1000, "run-a").expect("room again");
}

#[test]
fn runs_and_the_whole_gateway_have_limits_too() {
    let admission = Admission::new(limits(3, 10, 2));
    let _r1 = admission.admit(1, "run-a").expect("1");
    let _r2 = admission.admit(2, "run-a").expect("2");
    let by_run = admission.admit(3, "run-a").err().expect("run full");
    assert_eq!(
        by_run.to_string(),
        "too many sessions for run run-a: [limits] max_sessions_per_run is 2"
    );
    let _r3 = admission.admit(3, "run-b").expect("3");
    let all = admission.admit(4, "run-c").err().expect("gateway full");
    assert_eq!(all.key, "max_sessions");
    assert_eq!(
        all.to_string(),
        "too many sessions in all: [limits] max_sessions is 3"
    );
}

#[test]
fn counts_of_identities_that_left_are_forgotten() {
    let admission = Admission::new(limits(10, 10, 10));
    for uid in 0..5 {
        drop(admission.admit(uid, &format!("run-{uid}")).expect("admit"));
    }
    let open = admission.open.lock().expect("lock");
    assert_eq!(open.total, 0);
    assert!(open.by_uid.is_empty() && open.by_run.is_empty());
}

#[test]
fn refusals_told_at_once_are_bounded() {
    let admission = Admission::new(limits(1, 1, 1));
    let slots: Vec<_> = (0..REFUSALS_IN_FLIGHT)
        .map(|_| admission.refusal_slot().expect("slot"))
        .collect();
    assert!(admission.refusal_slot().is_none(), "one too many");
    drop(slots);
    assert!(admission.refusal_slot().is_some(), "released");
}

#[test]
fn the_descriptor_budget_refuses_an_explicit_limit_and_lowers_the_default() {
    let explicit = LimitsConfig {
        max_sessions: Some(4096),
        ..LimitsConfig::default()
    };
    // 2 × 4096 + 512 = 8704.
    assert_eq!(descriptors_needed(4096), 8704);
    assert_eq!(explicit.limits(8704).expect("fits").max_sessions, 4096);
    let err = explicit.limits(4096).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the open-file limit (RLIMIT_NOFILE) is 4096, but [limits] max_sessions = 4096 needs \
         8704 descriptors (2 per session + 512): raise the limit (LimitNOFILE= in the unit, \
         `ulimit -n` before exec) or lower max_sessions to 1792 or less"
    );
    // The default adapts to the host, so `exec` needs no config on a small limit.
    let default = LimitsConfig::default();
    assert_eq!(default.limits(1 << 20).expect("big").max_sessions, 4096);
    assert_eq!(default.limits(4096).expect("lowered").max_sessions, 1792);
    // Too small for a single session: refused, default or not.
    assert!(default.limits(512).is_err());
}

#[test]
fn the_config_becomes_durations() {
    let config = LimitsConfig {
        startup_timeout_secs: 2,
        idle_timeout_secs: 3,
        max_sessions: Some(10),
        max_sessions_per_uid: 5,
        max_sessions_per_run: 6,
    };
    assert_eq!(
        config.limits(1 << 16).expect("fits"),
        Limits {
            startup_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(3),
            ..limits(10, 5, 6)
        }
    );
}

#[test]
fn refusals_are_reported_first_at_once_then_in_batches() {
    let admission = Admission::new(limits(1, 1, 1));
    assert_eq!(admission.refusals_to_report(), Some(1));
    assert_eq!(admission.refusals_to_report(), None);
    assert_eq!(admission.refusals_to_report(), None);
    admission.unreported.lock().expect("lock").1 = Some(Instant::now() - REPORT_EVERY);
    assert_eq!(admission.refusals_to_report(), Some(3));
}
