//! Compile tests of `#[entity]`: every refused form fails with a pinned message, and every
//! accepted form compiles.

#[test]
fn refused_forms_fail_with_clear_errors() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
}

#[test]
fn accepted_forms_compile() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
}
