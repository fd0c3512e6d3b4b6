//! The embedded broker's front door: it owns the public listeners, checks
//! every outside client and relays what passes to rumqttd on a private
//! loopback listener.
//!
//! rumqttd trusts its clients too much (MQTT-NOTES.md): a persistent session
//! in a shared group panics its router, a second connection with the
//! worker's client id throws the worker out, and anyone may publish the
//! worker's statuses. So each client's CONNECT is read here first (reserved
//! client ids and wrong logins are refused with a CONNACK, sessions are made
//! clean), then its packets are followed frame by frame: a PUBLISH to a
//! topic only the worker writes, from a role that may not publish, or over
//! `max_payload_size` is answered here and never reaches rumqttd. The
//! broker-to-client direction is relayed as is. Accepted sockets get
//! TCP_NODELAY, which rumqttd never sets on its own.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::packets::{self, Header, Malformed};
use super::rules::{Role, Rules};
use crate::metrics::BrokerRefusal;

/// How long a new client gets to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers the front door sends itself, waiting for the client's writer.
const ANSWER_QUEUE: usize = 64;
/// How long the front door's last answers get to reach a client that is
/// being disconnected.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Why one client's connection ended early.
#[derive(Debug, thiserror::Error)]
enum FrontError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error("no CONNECT in time")]
    ConnectTimeout,
    #[error("the first packet is not a CONNECT")]
    NotConnect,
    #[error("unsupported protocol level {0}")]
    Protocol(u8),
    #[error("undecodable CONNECT")]
    BadConnect,
    #[error("a second CONNECT")]
    SecondConnect,
    #[error("a packet over max_payload_size")]
    TooLarge,
}

/// When the front door last passed rumqttd's packets on to an outside
/// client: a shutdown waits for that to go quiet, so that what the worker
/// published last (its final statuses) reaches the subscribers before the
/// process, and the broker with it, ends.
#[derive(Debug)]
pub struct Traffic {
    since: Instant,
    /// Milliseconds after `since` of the last write to a client.
    last_write_ms: AtomicU64,
}

impl Traffic {
    /// No traffic yet.
    pub fn new() -> Self {
        Traffic {
            since: Instant::now(),
            last_write_ms: AtomicU64::new(0),
        }
    }

    fn wrote(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_write_ms.store(now, Ordering::Relaxed);
    }

    /// How long nothing was passed on to a client.
    pub fn quiet_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_write_ms.load(Ordering::Relaxed));
        self.since.elapsed().saturating_sub(last)
    }
}

/// Accepts clients on `listener` forever, relaying each one that passes
/// `rules` to rumqttd at `upstream`, and noting in `traffic` when packets
/// went out to a client.
pub async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    rules: Arc<Rules>,
    traffic: Arc<Traffic>,
) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("embedded broker cannot accept a client: {e}");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let rules = rules.clone();
        let traffic = traffic.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(client, upstream, &rules, &traffic).await {
                tracing::debug!(%peer, "embedded broker client dropped: {e}");
            }
        });
    }
}

/// One client from its CONNECT to its last packet.
async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    rules: &Rules,
    traffic: &Traffic,
) -> Result<(), FrontError> {
    client.set_nodelay(true)?;
    let mut buf = BytesMut::with_capacity(4096);
    let header = tokio::time::timeout(
        CONNECT_TIMEOUT,
        read_frame(&mut client, &mut buf, rules.max_payload_size()),
    )
    .await
    .map_err(|_| FrontError::ConnectTimeout)??;
    if header.kind() != packets::CONNECT {
        return Err(FrontError::NotConnect);
    }
    let frame = buf.split_to(header.frame_len());
    let level = packets::connect_level(&frame[header.header_len..]).unwrap_or(0);
    let v5 = match level {
        5 => true,
        4 => false,
        other => return Err(FrontError::Protocol(other)),
    };
    let checked = match v5 {
        true => check_connect_v5(frame, rules),
        false => check_connect_v4(frame, rules),
    }?;
    let (connect, role, client_id) = match checked {
        Ok(accepted) => accepted,
        Err(refusal) => {
            client.write_all(&refusal).await?;
            return Ok(());
        }
    };
    let mut broker = TcpStream::connect(upstream).await?;
    broker.set_nodelay(true)?;
    broker.write_all(&connect).await?;
    let (client_read, client_write) = client.into_split();
    let (broker_read, broker_write) = broker.into_split();
    let (answers, answers_rx) = mpsc::channel(ANSWER_QUEUE);
    let mut up = Upstream {
        v5,
        client_id,
        role,
        rules,
        answers,
        aliases: HashMap::new(),
        refused_qos2: HashSet::new(),
        skip: 0,
    };
    let down = downstream(broker_read, client_write, answers_rx, traffic);
    tokio::pin!(down);
    tokio::select! {
        result = up.relay(client_read, broker_write, buf) => {
            // Answers still queued (a DISCONNECT saying why) go out before
            // the connection closes; the closed queue then ends `down`.
            drop(up);
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, &mut down).await;
            result
        }
        result = &mut down => result,
    }
}

/// Reads until `buf` holds one whole packet no longer than `max` and returns
/// its header.
async fn read_frame(
    client: &mut TcpStream,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Header, FrontError> {
    loop {
        if let Some(header) = Header::parse(buf)? {
            if header.remaining > max {
                return Err(FrontError::TooLarge);
            }
            if buf.len() >= header.frame_len() {
                return Ok(header);
            }
        }
        if client.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

/// A CONNECT to pass on (re-encoded) with the client's role, or the CONNACK
/// refusing it.
type Checked = Result<(Vec<u8>, Role, String), Vec<u8>>;

fn check_connect_v5(frame: BytesMut, rules: &Rules) -> Result<Checked, FrontError> {
    use rumqttc::v5::mqttbytes::v5::Packet;
    let mut frame = frame;
    let Ok(Packet::Connect(mut connect, will, login)) = Packet::read(&mut frame, None) else {
        return Err(FrontError::BadConnect);
    };
    let id = connect.client_id.clone();
    let login_pair = login
        .as_ref()
        .map(|l| (l.username.as_str(), l.password.as_str()));
    let will_topic = will
        .as_ref()
        .map(|w| String::from_utf8_lossy(&w.topic).into_owned());
    let role = match rules.admit(&id, login_pair, will_topic.as_deref()) {
        Ok(role) => role,
        Err(refusal) => return Ok(Err(packets::connack(true, refusal.v5_code()))),
    };
    // The embedded broker's sessions die with the process anyway, and a
    // persistent one in a shared group panics rumqttd's router.
    connect.clean_start = true;
    if let Some(properties) = connect.properties.as_mut() {
        properties.session_expiry_interval = None;
    }
    let mut out = BytesMut::new();
    Packet::Connect(connect, will, login)
        .write(&mut out, None)
        .map_err(|_| FrontError::BadConnect)?;
    Ok(Ok((out.to_vec(), role, id)))
}

fn check_connect_v4(frame: BytesMut, rules: &Rules) -> Result<Checked, FrontError> {
    use rumqttc::mqttbytes::v4::Packet;
    let mut frame = frame;
    let Ok(Packet::Connect(mut connect)) = Packet::read(&mut frame, usize::MAX) else {
        return Err(FrontError::BadConnect);
    };
    let login_pair = connect
        .login
        .as_ref()
        .map(|l| (l.username.as_str(), l.password.as_str()));
    let will_topic = connect.last_will.as_ref().map(|w| w.topic.as_str());
    let role = match rules.admit(&connect.client_id, login_pair, will_topic) {
        Ok(role) => role,
        Err(refusal) => return Ok(Err(packets::connack(false, refusal.v4_code()))),
    };
    connect.clean_session = true;
    let id = connect.client_id.clone();
    let mut out = BytesMut::new();
    Packet::Connect(connect)
        .write(&mut out, usize::MAX)
        .map_err(|_| FrontError::BadConnect)?;
    Ok(Ok((out.to_vec(), role, id)))
}

/// Relays rumqttd's packets to the client, with the front door's own
/// answers slipped in between whole packets.
async fn downstream(
    mut broker: OwnedReadHalf,
    mut client: OwnedWriteHalf,
    mut answers: mpsc::Receiver<Vec<u8>>,
    traffic: &Traffic,
) -> Result<(), FrontError> {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        tokio::select! {
            read = broker.read_buf(&mut buf) => {
                if read? == 0 {
                    return Ok(());
                }
                let whole = whole_packets(&buf)?;
                if whole > 0 {
                    client.write_all(&buf[..whole]).await?;
                    buf.advance(whole);
                    traffic.wrote();
                }
            }
            answer = answers.recv() => match answer {
                Some(answer) => client.write_all(&answer).await?,
                None => return Ok(()),
            },
        }
    }
}

/// Length of the whole packets at the start of `buf`.
fn whole_packets(buf: &[u8]) -> Result<usize, Malformed> {
    let mut end = 0;
    while let Some(header) = Header::parse(&buf[end..])? {
        if buf.len() - end < header.frame_len() {
            break;
        }
        end += header.frame_len();
    }
    Ok(end)
}

/// The client-to-broker direction of one connection.
struct Upstream<'r> {
    v5: bool,
    client_id: String,
    role: Role,
    rules: &'r Rules,
    answers: mpsc::Sender<Vec<u8>>,
    /// MQTT 5 topic aliases the client set, so an aliased PUBLISH is judged
    /// by its real topic.
    aliases: HashMap<u16, String>,
    /// QoS 2 packet ids refused over 3.1.1, whose PUBREL is answered here.
    refused_qos2: HashSet<u16>,
    /// Bytes of a refused oversized packet still to discard.
    skip: usize,
}

/// What to do with one packet from the client.
enum Verdict {
    Forward,
    Answer(Option<Vec<u8>>),
    Wait,
}

impl Upstream<'_> {
    async fn relay(
        &mut self,
        mut client: OwnedReadHalf,
        mut broker: OwnedWriteHalf,
        mut buf: BytesMut,
    ) -> Result<(), FrontError> {
        let mut out = BytesMut::with_capacity(8192);
        loop {
            self.sort(&mut buf, &mut out).await?;
            if !out.is_empty() {
                broker.write_all(&out).await?;
                out.clear();
            }
            if client.read_buf(&mut buf).await? == 0 {
                return Ok(());
            }
        }
    }

    /// Moves the whole packets of `buf` to `out` or answers them here.
    async fn sort(&mut self, buf: &mut BytesMut, out: &mut BytesMut) -> Result<(), FrontError> {
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len());
                buf.advance(n);
                self.skip -= n;
                if self.skip > 0 {
                    return Ok(());
                }
            }
            let Some(header) = Header::parse(buf)? else {
                return Ok(());
            };
            let verdict = if header.remaining > self.rules.max_payload_size() {
                self.oversized(header, &buf[header.header_len..])?
            } else if buf.len() < header.frame_len() {
                Verdict::Wait
            } else {
                self.judge(header, &buf[..header.frame_len()])?
            };
            match verdict {
                Verdict::Wait => return Ok(()),
                Verdict::Forward => out.extend_from_slice(&buf[..header.frame_len()]),
                Verdict::Answer(answer) => {
                    if let Some(answer) = answer {
                        // A closed client ends the connection on the next read.
                        let _ = self.answers.send(answer).await;
                    }
                }
            }
            let whole = header.frame_len().min(buf.len());
            self.skip = header.frame_len() - whole;
            buf.advance(whole);
        }
    }

    /// A packet over `max_payload_size`: a PUBLISH is refused and skipped,
    /// keeping the connection; anything else ends it.
    fn oversized(&mut self, header: Header, body: &[u8]) -> Result<Verdict, FrontError> {
        if header.kind() != packets::PUBLISH {
            if self.v5 {
                let _ = self
                    .answers
                    .try_send(packets::disconnect(packets::PACKET_TOO_LARGE));
            }
            return Err(FrontError::TooLarge);
        }
        let qos = header.qos();
        if body.len() < packets::publish_start_len(body, qos).min(header.remaining) {
            return Ok(Verdict::Wait);
        }
        let (topic, pkid) = packets::publish_start(body, qos)?.ok_or(Malformed)?;
        self.rules
            .refused_publish(&self.client_id, &topic, BrokerRefusal::TooLarge);
        Ok(self.refuse(qos, pkid, packets::QUOTA_EXCEEDED))
    }

    /// A whole packet within the limit.
    fn judge(&mut self, header: Header, frame: &[u8]) -> Result<Verdict, FrontError> {
        let body = &frame[header.header_len..];
        match header.kind() {
            packets::PUBLISH => {
                let qos = header.qos();
                let (topic, pkid) = self.publish_topic(header, frame)?;
                Ok(match self.rules.may_not_publish(self.role, &topic) {
                    Some(why) => {
                        self.rules.refused_publish(&self.client_id, &topic, why);
                        self.refuse(qos, pkid, packets::NOT_AUTHORIZED)
                    }
                    None => Verdict::Forward,
                })
            }
            packets::PUBREL => match packets::pubrel_id(body) {
                Some(pkid) if self.refused_qos2.remove(&pkid) => {
                    Ok(Verdict::Answer(Some(packets::pubcomp(pkid))))
                }
                _ => Ok(Verdict::Forward),
            },
            packets::CONNECT => Err(FrontError::SecondConnect),
            _ => Ok(Verdict::Forward),
        }
    }

    /// The topic a PUBLISH really goes to (resolving MQTT 5 topic aliases)
    /// and its packet id.
    fn publish_topic(&mut self, header: Header, frame: &[u8]) -> Result<(String, u16), FrontError> {
        let body = &frame[header.header_len..];
        let (topic, pkid) = packets::publish_start(body, header.qos())?.ok_or(Malformed)?;
        if !self.v5 {
            return Ok((topic, pkid));
        }
        use rumqttc::v5::mqttbytes::v5::Packet;
        let mut frame = BytesMut::from(frame);
        let Ok(Packet::Publish(publish)) = Packet::read(&mut frame, None) else {
            return Err(Malformed.into());
        };
        let alias = publish.properties.and_then(|p| p.topic_alias);
        Ok(match alias {
            Some(alias) if topic.is_empty() => {
                (self.aliases.get(&alias).cloned().unwrap_or_default(), pkid)
            }
            Some(alias) => {
                self.aliases.insert(alias, topic.clone());
                (topic, pkid)
            }
            None => (topic, pkid),
        })
    }

    /// Answers a refused PUBLISH (nothing for QoS 0).
    fn refuse(&mut self, qos: u8, pkid: u16, reason: u8) -> Verdict {
        if !self.v5 && qos == 2 {
            self.refused_qos2.insert(pkid);
        }
        Verdict::Answer(packets::publish_answer(self.v5, qos, pkid, reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_packets_stop_before_a_partial_one() {
        let buf = [0xc0, 0, 0x30, 3, 0, 1, b'a', 0x30, 5, 0];
        assert_eq!(whole_packets(&buf), Ok(7));
        assert_eq!(whole_packets(&buf[..2]), Ok(2));
        assert_eq!(whole_packets(&[]), Ok(0));
    }
}
