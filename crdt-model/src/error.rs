use crate::ids::MessageId;

/// Why an operation on a chat document was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The input breaks a rule of the model (too long, empty, malformed id, ...).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The message does not exist in this chat.
    #[error("no message {0} in this chat")]
    MessageNotFound(MessageId),
    /// The device may not do this (for example, edit another device's message).
    #[error("not allowed: {0}")]
    Forbidden(String),
    /// The message was deleted; it can no longer be edited or reacted to.
    #[error("message {0} was deleted")]
    Deleted(MessageId),
    /// Changes by a device this one does not trust: not in its roster, or removed from the
    /// mesh. Unlike the other refusals of data from a peer, an honest device can send these
    /// while news of a roster change is still on its way, so they are not misbehaviour.
    #[error("not trusted: {0}")]
    Untrusted(String),
    /// More than this device takes on at once (changes waiting for their dependencies, or a
    /// batch too costly to check). An honest device can send it in a large catch-up, so it is
    /// not misbehaviour; the exchange is refused and starts afresh.
    #[error("too large: {0}")]
    TooLarge(String),
    /// Changes whose authorship this replica cannot prove yet: no attestation that reaches
    /// them came along. An honest device can send these (it may hold changes whose covering
    /// attestation it has not applied yet), so they are refused without blame; a forged change
    /// is refused here too, and never applied. An attestation whose signature is wrong is
    /// [`ModelError::Invalid`]: no honest device sends one.
    #[error("unproven authorship: {0}")]
    Unproven(String),
    /// The bytes are not a chat document this version understands.
    #[error("not a valid chat document: {0}")]
    Corrupt(String),
    /// A chat of a schema newer than this version reads. Honest devices of a newer version
    /// write them, so they are refused without blame (updating this device takes them).
    #[error("written by a newer version: {0}")]
    NewerSchema(String),
    /// Changes that clash with a device's equivocation (see [`crate::equivocation`]): a change
    /// that differs from one this replica holds under the same actor and sequence number, or
    /// one this replica does not keep because the device equivocated. Carries the evidence for
    /// the other side. The device that passed such changes on may be honest and unaware.
    #[error("the device that wrote {} equivocated (sequence number {})", .0.actor, .0.seq)]
    Equivocation(Box<crate::equivocation::Evidence>),
    /// Automerge refused an operation.
    #[error("document error: {0}")]
    Automerge(#[from] automerge::AutomergeError),
}
