//! The conformance suite: every case written once in [`suite`], expanded per transport by
//! [`conformance!`] into one `#[tokio::test]` per case.
//!
//! A transport's test file lists every case; a case the transport cannot support carries
//! `#[ignore = "why"]`, and the generated `listing_matches_capabilities` test fails if the
//! list misses a case or an ignore disagrees with what the transport reports through its
//! capabilities at run time.
//!
//! ```ignore
//! aether_integration_tests::conformance! {
//!     harness: MemoryHarness::new(true);
//!     broadcast_reaches_matching_subscribers_only,
//!     #[ignore = "no wildcard subscriptions"] wildcard_filters,
//!     ...
//! }
//! ```

pub mod brokers;
pub mod harness;
pub mod suite;

/// Expands the conformance cases for one harness expression (evaluated once per test).
#[macro_export]
macro_rules! conformance {
    (harness: $harness:expr; $( $(#[ignore = $why:literal])? $case:ident ),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[ignore = $why])?
            async fn $case() {
                let _ = $crate::suite::WORKER_BIN.set(env!("CARGO_BIN_EXE_aether-test-worker"));
                let h = $harness;
                let union = $crate::harness::union();
                $crate::suite::$case(&h, &union).await;
                $crate::harness::Harness::cleanup(&h, &union).await;
            }
        )*

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn listing_matches_capabilities() {
            let h = $harness;
            let listed: &[(&str, bool)] = &[
                $( (stringify!($case), $crate::conformance!(@ignored $($why)?)) ),*
            ];
            $crate::suite::check_listing(&h, listed).await;
        }
    };
    (@ignored $why:literal) => { true };
    (@ignored) => { false };
}
