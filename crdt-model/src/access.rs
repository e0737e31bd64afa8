//! Small helpers for reading and writing Automerge documents the model's way: typed reads
//! that treat anything unexpected as absent (documents come from peers), and the checks every
//! written string goes through.

use automerge::{
    AutoCommit, AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, Value,
    transaction::CommitOptions,
};

use crate::ModelError;

/// The time recorded in an Automerge change. Automerge delta-encodes change times and overflows
/// when two differ by more than `i64::MAX`, so wild clocks are clamped to the clock's range.
pub(crate) fn change_time(now_ms: i64) -> i64 {
    now_ms.clamp(0, crate::clock::MAX_WALL_MS as i64)
}

pub(crate) fn check_text(
    what: &str,
    text: &str,
    max: usize,
    allow_empty: bool,
) -> Result<(), ModelError> {
    if !allow_empty && text.trim().is_empty() {
        return Err(ModelError::Invalid(format!("{what} must not be empty")));
    }
    if text.len() > max {
        return Err(ModelError::Invalid(format!(
            "{what} is {} bytes; the limit is {max}",
            text.len()
        )));
    }
    if text.chars().any(|c| c == '\0') {
        return Err(ModelError::Invalid(format!("{what} must not contain NUL")));
    }
    Ok(())
}

pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

pub(crate) fn get_scalar(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<ScalarValue> {
    match doc.get(obj, key).ok()?? {
        (Value::Scalar(v), _) => Some(v.into_owned()),
        _ => None,
    }
}

pub(crate) fn get_str(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<String> {
    match get_scalar(doc, obj, key)? {
        ScalarValue::Str(v) => Some(v.to_string()),
        _ => None,
    }
}

pub(crate) fn get_int(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<i64> {
    match get_scalar(doc, obj, key)? {
        ScalarValue::Int(v) => Some(v),
        ScalarValue::Uint(v) => i64::try_from(v).ok(),
        _ => None,
    }
}

pub(crate) fn get_map(doc: &AutoCommit, obj: &ObjId, key: &str) -> Option<ObjId> {
    match doc.get(obj, key).ok()?? {
        (Value::Object(ObjType::Map), id) => Some(id),
        _ => None,
    }
}

/// Runs `ops` as one local change: committed if they all succeed, its encoded bytes appended to
/// `unsaved` (for the caller to persist); rolled back otherwise, so that a failed operation
/// never leaves half its writes behind.
pub(crate) fn write_change(
    doc: &mut AutoCommit,
    unsaved: &mut Vec<u8>,
    now_ms: i64,
    ops: impl FnOnce(&mut AutoCommit) -> Result<(), AutomergeError>,
) -> Result<(), ModelError> {
    match ops(doc) {
        Ok(()) => {
            doc.commit_with(CommitOptions::default().with_time(change_time(now_ms)));
            if let Some(change) = doc.get_last_local_change() {
                unsaved.extend_from_slice(change.raw_bytes());
            }
            Ok(())
        }
        Err(e) => {
            doc.rollback();
            Err(e.into())
        }
    }
}
