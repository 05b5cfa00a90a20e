//! A publisher that speaks AMQP 0-9-1 over a bare socket, to send what RabbitMQ accepts
//! but a well-behaved client cannot build: routing keys, message ids and header names
//! that are not UTF-8. Just enough of the protocol: PLAIN login, one channel, publisher
//! confirms, one publish at a time.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One message as raw bytes.
#[derive(Debug, Default)]
pub struct RawMessage<'a> {
    /// The exchange to publish to.
    pub exchange: &'a str,
    /// The routing key, any bytes up to 255.
    pub routing_key: &'a [u8],
    /// The `message_id` property, any bytes up to 255.
    pub message_id: Option<&'a [u8]>,
    /// Headers as (name, long-string value), the names any bytes up to 255.
    pub headers: Vec<(&'a [u8], &'a [u8])>,
    /// The body.
    pub body: &'a [u8],
}

/// A connection with channel 1 open in confirm mode.
#[derive(Debug)]
pub struct RawAmqp {
    sock: TcpStream,
}

impl RawAmqp {
    /// Connects and logs in to `url` (`amqp://user:pass@host:port/vhost`).
    pub async fn connect(url: &str) -> RawAmqp {
        let u = aether::BrokerUrl::parse(url).expect("AMQP URL");
        let port = u.port.unwrap_or(5672);
        let sock = TcpStream::connect((u.host.as_str(), port))
            .await
            .unwrap_or_else(|e| panic!("RabbitMQ at {}:{port} unreachable: {e}", u.host));
        let mut c = RawAmqp { sock };
        c.sock.write_all(b"AMQP\x00\x00\x09\x01").await.unwrap();
        c.expect(0, 10, 10).await; // connection.start
        let user = u.username.clone().unwrap_or_else(|| "guest".into());
        let pass = u
            .password
            .as_ref()
            .map_or_else(|| "guest".to_owned(), |p| p.expose().to_owned());
        let mut m = method(10, 11);
        m.extend(0u32.to_be_bytes()); // client properties: empty table
        short(&mut m, b"PLAIN");
        long(&mut m, format!("\0{user}\0{pass}").as_bytes());
        short(&mut m, b"en_US");
        c.send(1, 0, &m).await;
        let tune = c.expect(0, 10, 30).await;
        let mut m = method(10, 31);
        m.extend(&tune[0..2]); // channel max
        m.extend(131_072u32.to_be_bytes());
        m.extend(0u16.to_be_bytes()); // no heartbeats
        c.send(1, 0, &m).await;
        let vhost = match u.path.as_str() {
            "" => "/".to_owned(),
            p => p.to_owned(),
        };
        let mut m = method(10, 40);
        short(&mut m, vhost.as_bytes());
        short(&mut m, b"");
        m.push(0);
        c.send(1, 0, &m).await;
        c.expect(0, 10, 41).await;
        let mut m = method(20, 10);
        short(&mut m, b"");
        c.send(1, 1, &m).await;
        c.expect(1, 20, 11).await;
        let mut m = method(85, 10);
        m.push(0);
        c.send(1, 1, &m).await;
        c.expect(1, 85, 11).await;
        c
    }

    /// Publishes `msg` and waits for the broker's confirm.
    pub async fn publish(&mut self, msg: &RawMessage<'_>) {
        let mut m = method(60, 40);
        m.extend(0u16.to_be_bytes());
        short(&mut m, msg.exchange.as_bytes());
        short(&mut m, msg.routing_key);
        m.push(0);
        self.send(1, 1, &m).await;
        let mut h = Vec::new();
        h.extend(60u16.to_be_bytes());
        h.extend(0u16.to_be_bytes());
        h.extend((msg.body.len() as u64).to_be_bytes());
        let mut flags = 0u16;
        if !msg.headers.is_empty() {
            flags |= 1 << 13;
        }
        if msg.message_id.is_some() {
            flags |= 1 << 7;
        }
        h.extend(flags.to_be_bytes());
        if !msg.headers.is_empty() {
            let mut table = Vec::new();
            for (k, v) in &msg.headers {
                short(&mut table, k);
                table.push(b'S');
                long(&mut table, v);
            }
            long(&mut h, &table);
        }
        if let Some(id) = msg.message_id {
            short(&mut h, id);
        }
        self.send(2, 1, &h).await;
        self.send(3, 1, msg.body).await;
        self.expect(1, 60, 80).await; // basic.ack
    }

    async fn send(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let mut f = vec![kind];
        f.extend(channel.to_be_bytes());
        f.extend((payload.len() as u32).to_be_bytes());
        f.extend(payload);
        f.push(0xce);
        self.sock.write_all(&f).await.unwrap();
    }

    /// Reads frames until the method `class.method` on `channel`; returns its arguments
    /// after the class and method ids. Panics on a close from the broker.
    async fn expect(&mut self, channel: u16, class: u16, id: u16) -> Vec<u8> {
        loop {
            let mut head = [0u8; 7];
            self.sock.read_exact(&mut head).await.unwrap();
            let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
            let mut payload = vec![0u8; size + 1];
            self.sock.read_exact(&mut payload).await.unwrap();
            payload.pop();
            if head[0] != 1 || payload.len() < 4 {
                continue;
            }
            let got = (
                u16::from_be_bytes([head[1], head[2]]),
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            if matches!((got.1, got.2), (10, 50) | (20, 40)) {
                panic!(
                    "the broker closed: {}",
                    String::from_utf8_lossy(&payload[4..])
                );
            }
            if got == (channel, class, id) {
                return payload.split_off(4);
            }
        }
    }
}

fn method(class: u16, id: u16) -> Vec<u8> {
    let mut m = class.to_be_bytes().to_vec();
    m.extend(id.to_be_bytes());
    m
}

fn short(out: &mut Vec<u8>, s: &[u8]) {
    out.push(u8::try_from(s.len()).expect("short string"));
    out.extend(s);
}

fn long(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u32).to_be_bytes());
    out.extend(s);
}
