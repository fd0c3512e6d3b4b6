//! A raw MQTT client speaking bytes, for what client libraries will not
//! send: a forged retained status, a reused client id, an oversized packet,
//! and for reading reason codes exactly as the broker wrote them.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long to wait for one packet from the broker.
const PACKET_TIMEOUT: Duration = Duration::from_secs(20);

/// One raw connection.
pub struct RawMqtt {
    stream: TcpStream,
    /// MQTT 5 (true) or 3.1.1.
    pub v5: bool,
}

/// Appends `len` as an MQTT variable byte integer.
fn varint(out: &mut Vec<u8>, mut len: usize) {
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        out.push(if len > 0 { byte | 0x80 } else { byte });
        if len == 0 {
            return;
        }
    }
}

fn string(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(&(text.len() as u16).to_be_bytes());
    out.extend_from_slice(text);
}

fn packet(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![byte1];
    varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// A CONNECT packet. `session_expiry` only for MQTT 5; `will` is a retained
/// QoS 1 Will `(topic, payload)`.
pub fn connect_packet(
    v5: bool,
    client_id: &str,
    clean: bool,
    session_expiry: Option<u32>,
    login: Option<(&str, &str)>,
    will: Option<(&str, &[u8])>,
) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(if v5 { 5 } else { 4 });
    let mut flags = if clean { 0x02 } else { 0 };
    if login.is_some() {
        flags |= 0xc0;
    }
    if will.is_some() {
        flags |= 0x04 | 0x08 | 0x20;
    }
    body.push(flags);
    body.extend_from_slice(&30u16.to_be_bytes());
    if v5 {
        let mut properties = Vec::new();
        if let Some(expiry) = session_expiry {
            properties.push(0x11);
            properties.extend_from_slice(&expiry.to_be_bytes());
        }
        varint(&mut body, properties.len());
        body.extend_from_slice(&properties);
    }
    string(&mut body, client_id.as_bytes());
    if let Some((topic, payload)) = will {
        if v5 {
            body.push(0);
        }
        string(&mut body, topic.as_bytes());
        string(&mut body, payload);
    }
    if let Some((user, password)) = login {
        string(&mut body, user.as_bytes());
        string(&mut body, password.as_bytes());
    }
    packet(0x10, &body)
}

/// A PUBLISH packet (`pkid` used for QoS 1 and 2).
pub fn publish_packet(
    v5: bool,
    topic: &str,
    qos: u8,
    retain: bool,
    pkid: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    if v5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1) | u8::from(retain), &body)
}

impl RawMqtt {
    /// Opens a TCP connection to 127.0.0.1:`port`.
    pub async fn open(port: u16, v5: bool) -> RawMqtt {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        RawMqtt { stream, v5 }
    }

    /// Connects with a clean session as `client_id` and returns the CONNACK.
    pub async fn connect(
        port: u16,
        v5: bool,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> (RawMqtt, Vec<u8>) {
        let mut raw = RawMqtt::open(port, v5).await;
        raw.send(&connect_packet(v5, client_id, true, None, login, None))
            .await;
        let connack = raw.read().await.expect("no CONNACK");
        (raw, connack)
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Publishes (see [`publish_packet`]).
    pub async fn publish(&mut self, topic: &str, qos: u8, retain: bool, pkid: u16, payload: &[u8]) {
        let packet = publish_packet(self.v5, topic, qos, retain, pkid, payload);
        self.send(&packet).await;
    }

    /// Reads one whole packet; None when the connection closed.
    pub async fn read(&mut self) -> Option<Vec<u8>> {
        tokio::time::timeout(PACKET_TIMEOUT, self.read_packet())
            .await
            .expect("no packet from the broker in time")
    }

    async fn read_packet(&mut self) -> Option<Vec<u8>> {
        let mut out = vec![self.stream.read_u8().await.ok()?];
        let mut len = 0usize;
        for shift in 0..4 {
            let byte = self.stream.read_u8().await.ok()?;
            out.push(byte);
            len |= usize::from(byte & 0x7f) << (7 * shift);
            if byte & 0x80 == 0 {
                break;
            }
        }
        let start = out.len();
        out.resize(start + len, 0);
        self.stream.read_exact(&mut out[start..]).await.ok()?;
        Some(out)
    }

    /// Sends PINGREQ and expects PINGRESP: the connection is alive.
    pub async fn ping(&mut self) {
        self.send(&[0xc0, 0]).await;
        assert_eq!(self.read().await, Some(vec![0xd0, 0]), "no PINGRESP");
    }
}
