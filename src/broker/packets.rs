//! MQTT framing for the front door: where a packet ends, what a PUBLISH is
//! addressed to, and the few packets the front door answers itself.
//!
//! Both MQTT 5 and 3.1.1 share the fixed header and the start of a PUBLISH
//! (topic, packet id), so only those bytes are read here; everything else is
//! relayed as it arrived.

/// MQTT control packet types (upper nibble of the first byte).
pub const CONNECT: u8 = 1;
/// PUBLISH.
pub const PUBLISH: u8 = 3;
/// PUBREL.
pub const PUBREL: u8 = 6;

/// MQTT 5 reason code: Client Identifier not valid.
pub const CLIENT_ID_NOT_VALID: u8 = 0x85;
/// MQTT 5 reason code: Bad User Name or Password.
pub const BAD_LOGIN: u8 = 0x86;
/// MQTT 5 reason code: Not authorized.
pub const NOT_AUTHORIZED: u8 = 0x87;
/// MQTT 5 reason code: Packet too large.
pub const PACKET_TOO_LARGE: u8 = 0x95;
/// MQTT 5 reason code: Quota exceeded (the only PUBACK code for "too big").
pub const QUOTA_EXCEEDED: u8 = 0x97;
/// MQTT 3.1.1 CONNACK return code: identifier rejected.
pub const V4_ID_REJECTED: u8 = 0x02;
/// MQTT 3.1.1 CONNACK return code: bad user name or password.
pub const V4_BAD_LOGIN: u8 = 0x04;
/// MQTT 3.1.1 CONNACK return code: not authorized.
pub const V4_NOT_AUTHORIZED: u8 = 0x05;

/// The fixed header of one packet at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The first byte (type and flags).
    pub byte1: u8,
    /// Length of the fixed header itself.
    pub header_len: usize,
    /// Remaining length (variable header and payload).
    pub remaining: usize,
}

/// Malformed framing: the connection cannot be followed any further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed MQTT packet")]
pub struct Malformed;

impl Header {
    /// Reads the fixed header at the start of `buf`: `Ok(None)` when more
    /// bytes are needed.
    pub fn parse(buf: &[u8]) -> Result<Option<Header>, Malformed> {
        let Some(&byte1) = buf.first() else {
            return Ok(None);
        };
        let mut remaining = 0usize;
        for (i, byte) in buf[1..].iter().take(4).enumerate() {
            remaining |= usize::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(Some(Header {
                    byte1,
                    header_len: i + 2,
                    remaining,
                }));
            }
        }
        if buf.len() >= 5 {
            return Err(Malformed);
        }
        Ok(None)
    }

    /// The packet type.
    pub fn kind(&self) -> u8 {
        self.byte1 >> 4
    }

    /// Header plus remaining length.
    pub fn frame_len(&self) -> usize {
        self.header_len + self.remaining
    }

    /// The QoS of a PUBLISH.
    pub fn qos(&self) -> u8 {
        (self.byte1 >> 1) & 3
    }
}

/// Topic and packet id of a PUBLISH whose variable header starts `body`:
/// `Ok(None)` when `body` is too short to tell.
pub fn publish_start(body: &[u8], qos: u8) -> Result<Option<(String, u16)>, Malformed> {
    let Some(len) = body.get(..2) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let id_len = if qos > 0 { 2 } else { 0 };
    let Some(rest) = body.get(2..2 + len + id_len) else {
        return Ok(None);
    };
    let topic = std::str::from_utf8(&rest[..len]).map_err(|_| Malformed)?;
    let pkid = match qos {
        0 => 0,
        _ => u16::from_be_bytes([rest[len], rest[len + 1]]),
    };
    Ok(Some((topic.to_owned(), pkid)))
}

/// How many bytes of a PUBLISH body [`publish_start`] needs at most.
pub fn publish_start_len(body: &[u8], qos: u8) -> usize {
    match body.get(..2) {
        Some(len) => {
            2 + usize::from(u16::from_be_bytes([len[0], len[1]])) + 2 * usize::from(qos > 0)
        }
        None => 2,
    }
}

/// The protocol level of a CONNECT body (4: 3.1.1, 5: MQTT 5).
pub fn connect_level(body: &[u8]) -> Option<u8> {
    let len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    body.get(2 + len).copied()
}

/// A CONNACK refusing the connection with `code` (a reason code for MQTT 5,
/// a return code for 3.1.1).
pub fn connack(v5: bool, code: u8) -> Vec<u8> {
    match v5 {
        true => vec![0x20, 3, 0, code, 0],
        false => vec![0x20, 2, 0, code],
    }
}

/// The answer to a refused PUBLISH of QoS 1 or 2 (PUBACK or PUBREC), with
/// `reason` for MQTT 5; 3.1.1 has no reason codes, so it reads as success.
pub fn publish_answer(v5: bool, qos: u8, pkid: u16, reason: u8) -> Option<Vec<u8>> {
    let byte1 = match qos {
        1 => 0x40,
        2 => 0x50,
        _ => return None,
    };
    let [hi, lo] = pkid.to_be_bytes();
    Some(match v5 {
        true => vec![byte1, 3, hi, lo, reason],
        false => vec![byte1, 2, hi, lo],
    })
}

/// PUBCOMP for `pkid` (ending a refused QoS 2 exchange of 3.1.1).
pub fn pubcomp(pkid: u16) -> Vec<u8> {
    let [hi, lo] = pkid.to_be_bytes();
    vec![0x70, 2, hi, lo]
}

/// The packet id of a PUBREL body.
pub fn pubrel_id(body: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*body.first()?, *body.get(1)?]))
}

/// An MQTT 5 DISCONNECT with `reason`.
pub fn disconnect(reason: u8) -> Vec<u8> {
    vec![0xe0, 1, reason]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_multi_byte_lengths_and_wait_for_more() {
        assert_eq!(Header::parse(&[]), Ok(None));
        assert_eq!(Header::parse(&[0x30]), Ok(None));
        assert_eq!(Header::parse(&[0x30, 0x80]), Ok(None));
        let header = Header::parse(&[0x32, 0xc1, 0x02, 9]).unwrap().unwrap();
        assert_eq!(header.kind(), PUBLISH);
        assert_eq!(header.qos(), 1);
        assert_eq!(header.remaining, 321);
        assert_eq!(header.frame_len(), 324);
        assert_eq!(
            Header::parse(&[0x30, 0xff, 0xff, 0xff, 0xff]),
            Err(Malformed)
        );
    }

    #[test]
    fn publish_start_reads_topic_and_id() {
        let body = [0, 3, b'a', b'/', b'b', 0, 7, b'x'];
        assert_eq!(publish_start(&body, 1), Ok(Some(("a/b".into(), 7))));
        assert_eq!(publish_start(&body, 0), Ok(Some(("a/b".into(), 0))));
        assert_eq!(publish_start(&body[..5], 1), Ok(None));
        assert_eq!(publish_start_len(&body, 1), 7);
        assert_eq!(publish_start(&[0, 1, 0xff], 0), Err(Malformed));
    }

    #[test]
    fn connect_level_and_answers() {
        let body = [0, 4, b'M', b'Q', b'T', b'T', 5, 2];
        assert_eq!(connect_level(&body), Some(5));
        assert_eq!(connack(true, CLIENT_ID_NOT_VALID), [0x20, 3, 0, 0x85, 0]);
        assert_eq!(connack(false, V4_ID_REJECTED), [0x20, 2, 0, 2]);
        assert_eq!(
            publish_answer(true, 1, 258, NOT_AUTHORIZED).unwrap(),
            [0x40, 3, 1, 2, 0x87]
        );
        assert_eq!(
            publish_answer(false, 2, 1, NOT_AUTHORIZED).unwrap(),
            [0x50, 2, 0, 1]
        );
        assert_eq!(publish_answer(true, 0, 1, NOT_AUTHORIZED), None);
        assert_eq!(pubrel_id(&[0, 9]), Some(9));
    }
}
