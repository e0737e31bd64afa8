//! The pairing protocol (`/chatsync/pair/1`, CBOR over request-response): one request from the
//! device that joins, one answer from the inviter.
//!
//! It runs over a Noise connection, so both device ids are authenticated by then; the request
//! proves that the joiner holds the ticket's secret, bound to both ids (see
//! `pairing::proof`). Messages are tiny and capped at [`MAX_PAIR_BYTES`]: a device that is
//! not paired may only ever make this device read this much.

use std::time::Duration;

use libp2p::{StreamProtocol, request_response};
use serde::{Deserialize, Serialize};

pub const PAIR_PROTOCOL: StreamProtocol = StreamProtocol::new("/chatsync/pair/1");
/// Largest pairing request or response on the wire.
pub const MAX_PAIR_BYTES: u64 = 1024;
/// How long the joiner waits for the inviter's answer (the dial included).
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PairRequest {
    /// Which invitation: the first 16 bytes of SHA-256 of the ticket's secret.
    #[serde(with = "serde_bytes")]
    pub invite: Vec<u8>,
    /// HMAC-SHA256 of both device ids under the ticket's secret.
    #[serde(with = "serde_bytes")]
    pub proof: Vec<u8>,
    /// What the inviter should call the joining device.
    pub name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PairResponse {
    /// The joiner is in the inviter's roster now; `name` is the inviter's own name.
    Accepted {
        name: String,
    },
    Refused {
        reason: RefusedReason,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusedReason {
    /// No such invitation: never issued, cancelled, or issued before the inviter restarted.
    Unknown,
    Used,
    Expired,
    BadProof,
    /// The inviter will not add this device (it was removed from the mesh before).
    NotAllowed,
}

pub type PairBehaviour = request_response::cbor::Behaviour<PairRequest, PairResponse>;

pub fn pair_behaviour() -> PairBehaviour {
    request_response::Behaviour::with_codec(
        request_response::cbor::codec::Codec::default()
            .set_request_size_maximum(MAX_PAIR_BYTES)
            .set_response_size_maximum(MAX_PAIR_BYTES),
        [(PAIR_PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(JOIN_TIMEOUT)
            .with_max_concurrent_streams(4),
    )
}
