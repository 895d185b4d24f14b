//! The build these tests run in: the hostile-guest tests of this crate are only worth something if
//! arithmetic on guest-supplied values that wraps panics instead (overflow checks on), so a profile
//! change that turned the checks off fails here rather than silently.

#[test]
fn hostile_tests_run_with_overflow_checks() {
    let max = std::hint::black_box(u32::MAX);
    let wrapped = std::panic::catch_unwind(|| max + std::hint::black_box(1));
    assert!(
        wrapped.is_err(),
        "u32::MAX + 1 did not panic: overflow checks are off in this profile"
    );
}
