use chatsync_model::ModelError;

use crate::store::StoreError;

/// Why an engine operation failed. The API maps each kind to an HTTP status and a stable code.
#[derive(Clone, Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    #[error("{what} is ambiguous ({} matches)", candidates.len())]
    Ambiguous {
        what: String,
        candidates: Vec<String>,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Gone(String),
    /// Data from another device that no honest device sends: malformed, oversized, forged, or
    /// breaking the rules of the chat. The network holds the sender to account for it
    /// (`net/conduct.rs`); refusals an honest device can cause (changes by a device not, or no
    /// longer, trusted) are [`EngineError::Forbidden`] instead.
    #[error("{0}")]
    Misbehaviour(String),
    /// A request retried with an idempotency key that an earlier, different request used.
    #[error("{0}")]
    Conflict(String),
    /// Not written for want of space: the disk holding the store has less than its reserve
    /// free (`store::Space`). Nothing was changed; the same request succeeds once space is freed.
    #[error("{0}")]
    StorageFull(String),
    #[error("storage failure: {0}")]
    Storage(String),
    /// The other device's changes clash with a device's equivocation: refused without blame,
    /// and answered with the evidence (encoded `chatsync_model::equivocation::Evidence`).
    #[error("the changes clash with a device's equivocation")]
    Equivocation(Vec<u8>),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ModelError> for EngineError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Invalid(m) => EngineError::Invalid(m),
            ModelError::MessageNotFound(id) => EngineError::NotFound(format!("no message {id}")),
            ModelError::Forbidden(m)
            | ModelError::Untrusted(m)
            | ModelError::Unproven(m)
            | ModelError::NewerSchema(m) => EngineError::Forbidden(m),
            ModelError::Deleted(id) => EngineError::Gone(format!("message {id} was deleted")),
            ModelError::TooLarge(m) => EngineError::Invalid(m),
            ModelError::Equivocation(evidence) => EngineError::Equivocation(evidence.encode()),
            e @ (ModelError::Corrupt(_) | ModelError::Automerge(_)) => {
                EngineError::Internal(e.to_string())
            }
        }
    }
}

impl EngineError {
    /// Whether the other device is to blame for this error, when it came of its data.
    pub fn is_misbehaviour(&self) -> bool {
        matches!(self, EngineError::Misbehaviour(_))
    }

    /// Whether this is a refusal of the other device's data (with or without blame), rather
    /// than a failure here.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            EngineError::Misbehaviour(_)
                | EngineError::Forbidden(_)
                | EngineError::Invalid(_)
                | EngineError::Equivocation(_)
        )
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Storage(e.to_string())
    }
}
