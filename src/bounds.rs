//! Upper bounds that several stages and the config validation must agree on:
//! the MQTT packet size announced to the broker, the payload limit that fits
//! under it, and the longest duration a setting may take.
//!
//! Plain constants and pure checks; imports nothing from the crate, so
//! `config`, `ingress` and `routes` use the same numbers without depending on
//! each other.

use std::time::Duration;

/// Largest packet we accept from the broker (MQTT 5 Maximum Packet Size): it
/// drops larger messages without telling anyone. Up to this size, a payload
/// over `limits.max_payload_bytes` gets a `payload_too_large` result.
pub const MAX_PACKET: u32 = 2 * 1024 * 1024;

/// What a PUBLISH needs beside its payload: fixed header (5 bytes), packet id
/// (2), a topic of up to MQTT's 65 535 bytes (+2), and about 64 KiB of
/// properties (response topic, correlation data, user properties).
pub const PACKET_HEADROOM: usize = 128 * 1024;

/// The largest `limits.max_payload_bytes`: a payload this size still fits in
/// [`MAX_PACKET`] with its topic and properties, so it is answered.
pub const MAX_PAYLOAD_BYTES: usize = MAX_PACKET as usize - PACKET_HEADROOM;

/// The most services kept from Home Assistant's `GET /api/services` (a
/// large home has about 1 500): beyond it the rest are not known, and calls
/// to them are sent as asked, as if no catalogue had been read.
pub const MAX_CATALOGUE_SERVICES: usize = 20_000;

/// The default `limits.max_result_bytes`: a result with a service response
/// larger than this goes out without it (`response_too_large`).
pub const DEFAULT_MAX_RESULT_BYTES: usize = 256 * 1024;

/// The largest result payload the publisher sends, and the largest
/// `limits.max_result_bytes`: like a command's payload, it must fit in
/// [`MAX_PACKET`] with its topic and properties.
pub const MAX_RESULT_BYTES: usize = MAX_PAYLOAD_BYTES;

/// The longest any duration setting may be: one year (`"1y"`, 365.25 days).
/// Far below what overflows `Instant + Duration` (about 292 billion years)
/// even times ten (the auth gate's longest pause).
pub const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

/// `d` if it is at most `max`, else the message for the key's error.
pub fn at_most(d: Duration, max: Duration) -> Result<Duration, String> {
    if d > max {
        return Err(format!("must be at most {}", humantime::format_duration(max)));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_limit_fits_under_the_packet_cap() {
        assert_eq!(MAX_PAYLOAD_BYTES, 1_966_080);
        assert!(MAX_PAYLOAD_BYTES + 65_535 + 2 + 2 + 5 < MAX_PACKET as usize);
    }

    #[test]
    fn durations_up_to_the_maximum_pass() {
        let table = [
            (Duration::from_secs(1), Ok(Duration::from_secs(1))),
            (MAX_DURATION, Ok(MAX_DURATION)),
            (MAX_DURATION + Duration::from_nanos(1), Err("must be at most 1year".to_owned())),
            (Duration::MAX, Err("must be at most 1year".to_owned())),
        ];
        for (d, expected) in table {
            assert_eq!(at_most(d, MAX_DURATION), expected, "{d:?}");
        }
    }
}
