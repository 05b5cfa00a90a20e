//! The conformance suite on WebSocket, against a hub this test process starts (on its own
//! runtime; the restart cases on a private one).

use integration_tests::brokers::ws::HubHarness;

integration_tests::conformance! {
    harness: HubHarness::new();
}
