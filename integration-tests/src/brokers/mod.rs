//! Private brokers a test starts on a spare port, so it may stop and restart them without
//! disturbing other tests on the shared brokers.

pub mod amqp;
pub mod mqtt;
pub mod redis;
pub mod redis_cluster;
pub mod ws;
pub mod zmq;

/// A free TCP port on 127.0.0.1 (bound, then released for the broker to take).
pub fn spare_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a spare port")
}
