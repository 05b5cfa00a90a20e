//! The payload limit a transport reports.

use aether::Error;

use super::*;

/// The largest payload a case sends: transports that carry hundreds of MiB are checked up
/// to this much.
const LARGEST_SENT: usize = 4 << 20;

/// `publish` and `enqueue` of more than `max_payload` bytes fail with `PayloadTooLarge`
/// and send nothing; a payload at the limit (or 4 MiB, whichever is smaller)
/// is carried whole both ways. Oversized messages that arrive from elsewhere are the
/// core's to count and drop (`oversized_payload_is_a_typed_error` in the task suite).
pub async fn payload_limit_enforced_on_send(h: &dyn Harness, u: &str) {
    let conn = h.connect().await;
    let limit = conn.capabilities().max_payload;
    let topic = t(u, "c/limit/x/1/status");
    let mut sub = conn
        .subscribe(&topic.as_str().parse().expect("filter"))
        .await
        .expect("subscribe");
    let q = queue(u, "g");
    let mut c = consume(&conn, &q, 2).await;

    // Zeroed pages cost nothing until touched; a transport refuses before copying.
    let over = Bytes::from(vec![0u8; limit + 1]);
    let too_large = |what: &str, r: Result<(), Error>| match r {
        Err(Error::PayloadTooLarge { size, limit: l }) => {
            assert_eq!(size, limit + 1, "{what}: the size reported");
            assert_eq!(l, limit, "{what}: the limit reported");
        }
        other => panic!(
            "{what} of {} bytes over a limit of {limit}: {other:?}",
            limit + 1
        ),
    };
    too_large("publish", conn.publish(&topic, over.clone()).await);
    too_large("enqueue", conn.enqueue(&perform(&q, "over"), over).await);

    let size = limit.min(LARGEST_SENT);
    let at = Bytes::from(vec![7u8; size]);
    conn.publish(&topic, at.clone())
        .await
        .expect("publish at the limit");
    conn.enqueue(&perform(&q, "at"), at.clone())
        .await
        .expect("enqueue at the limit");
    let (_, payload) = next_message(&mut sub, "the broadcast at the limit").await;
    assert!(
        payload == at,
        "the broadcast arrived whole ({} of {size} bytes)",
        payload.len()
    );
    let d = next_delivery(&mut c, "the perform at the limit").await;
    assert_eq!(d.topic.tid(), "at", "the oversized perform was not sent");
    assert!(
        d.payload == at,
        "the perform arrived whole ({} of {size} bytes)",
        d.payload.len()
    );
    d.ack().await.expect("ack");
    nothing_more(&mut c, "the oversized perform was not sent").await;
    conn.close().await.expect("close");
}
