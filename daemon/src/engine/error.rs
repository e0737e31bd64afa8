use chatsync_model::ModelError;

use crate::store::StoreError;

/// Why an engine operation failed. The API maps each kind to an HTTP status and a stable code.
#[derive(Debug, thiserror::Error)]
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
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ModelError> for EngineError {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Invalid(m) => EngineError::Invalid(m),
            ModelError::MessageNotFound(id) => EngineError::NotFound(format!("no message {id}")),
            ModelError::Forbidden(m) => EngineError::Forbidden(m),
            ModelError::Deleted(id) => EngineError::Gone(format!("message {id} was deleted")),
            e @ (ModelError::Corrupt(_) | ModelError::Automerge(_)) => {
                EngineError::Internal(e.to_string())
            }
        }
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Storage(e.to_string())
    }
}
