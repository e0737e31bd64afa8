//! Turning what a person types into a chat or message id.
//!
//! A chat is named by its id, a unique title, or an unambiguous id prefix; a message by its id
//! or an unambiguous id prefix. An ambiguous name is an error that lists the candidates, so the
//! person can pick one; a name that is one chat's title and another's id prefix is ambiguous
//! too (quietly picking either would show the wrong chat). A title cannot be written as a chat
//! id ([`looks_like_an_id`]), so no title hides a chat's full id.

use std::collections::BTreeMap;

use chatsync_model::{ChatDoc, ChatId, MessageId};

use super::EngineError;
use crate::store::ChatRecord;

/// Shortest id prefix accepted, so that a short title is never mistaken for a prefix.
pub const MIN_PREFIX: usize = 4;
/// How many candidates an ambiguity error lists.
const MAX_CANDIDATES: usize = 10;

pub fn resolve_chat(
    records: &BTreeMap<ChatId, ChatRecord>,
    reference: &str,
) -> Result<ChatId, EngineError> {
    if let Ok(id) = ChatId::new(reference)
        && records.contains_key(&id)
    {
        return Ok(id);
    }
    let mut candidates: Vec<&ChatId> = records
        .iter()
        .filter(|(_, r)| r.title == reference)
        .map(|(id, _)| id)
        .collect();
    if reference.len() >= MIN_PREFIX {
        let by_prefix: Vec<&ChatId> = records
            .keys()
            .filter(|id| id.as_str().starts_with(reference) && !candidates.contains(id))
            .collect();
        candidates.extend(by_prefix);
    }
    match candidates.as_slice() {
        [] => Err(EngineError::NotFound(format!(
            "no chat named {reference:?}"
        ))),
        [one] => Ok((*one).clone()),
        many => Err(EngineError::Ambiguous {
            what: format!("chat {reference:?}"),
            candidates: many
                .iter()
                .take(MAX_CANDIDATES)
                .map(|id| {
                    let title = records.get(*id).map(|r| r.title.as_str()).unwrap_or("");
                    format!("{id} ({title})")
                })
                .collect(),
        }),
    }
}

/// Whether a title has the form of a chat's id (32 hexadecimal digits), which titles may not:
/// typed as a name, it would hide the chat whose id it is.
pub fn looks_like_an_id(title: &str) -> bool {
    title.len() == 32 && title.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn resolve_message(doc: &ChatDoc, reference: &str) -> Result<MessageId, EngineError> {
    let exact = MessageId::new(reference).ok();
    if reference.len() < MIN_PREFIX && exact.as_ref().is_none_or(|id| doc.message(id).is_none()) {
        return Err(EngineError::NotFound(format!(
            "no message {reference:?} (give at least {MIN_PREFIX} characters of its id)"
        )));
    }
    let found = doc.find_messages(reference, MAX_CANDIDATES);
    match found.as_slice() {
        [] => Err(EngineError::NotFound(format!("no message {reference:?}"))),
        [one] => Ok(one.clone()),
        many => Err(EngineError::Ambiguous {
            what: format!("message {reference:?}"),
            candidates: many.iter().map(ToString::to_string).collect(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(items: &[(&str, &str)]) -> BTreeMap<ChatId, ChatRecord> {
        items
            .iter()
            .map(|(id, title)| {
                (
                    ChatId::new(*id).unwrap(),
                    ChatRecord {
                        title: title.to_string(),
                        created_at: 0,
                        created_by: "d".into(),
                        messages: 0,
                        last_activity: 0,
                        heads: Vec::new(),
                        next_seq: 0,
                        own_newest: None,
                        unchecked: false,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn resolves_by_id_title_and_prefix() {
        let r = records(&[
            ("aaaa1111", "family"),
            ("aaaa2222", "work"),
            ("bbbb3333", "work"),
        ]);
        assert_eq!(resolve_chat(&r, "aaaa1111").unwrap().as_str(), "aaaa1111");
        assert_eq!(resolve_chat(&r, "family").unwrap().as_str(), "aaaa1111");
        assert_eq!(resolve_chat(&r, "bbbb").unwrap().as_str(), "bbbb3333");
        assert!(matches!(
            resolve_chat(&r, "nope"),
            Err(EngineError::NotFound(_))
        ));
        // Too short to be a prefix.
        assert!(matches!(
            resolve_chat(&r, "bbb"),
            Err(EngineError::NotFound(_))
        ));
    }

    #[test]
    fn a_name_that_is_one_chats_title_and_anothers_id_prefix_is_ambiguous() {
        let r = records(&[("ecd5aaaa", "family"), ("bbbb3333", "ecd5")]);
        match resolve_chat(&r, "ecd5") {
            Err(EngineError::Ambiguous { candidates, .. }) => {
                assert_eq!(candidates.len(), 2, "{candidates:?}");
                assert!(candidates.iter().any(|c| c.contains("ecd5aaaa")));
                assert!(candidates.iter().any(|c| c.contains("bbbb3333")));
            }
            other => panic!("expected ambiguity, got {other:?}"),
        }
        // The full id still names its chat.
        assert_eq!(resolve_chat(&r, "ecd5aaaa").unwrap().as_str(), "ecd5aaaa");
        assert!(looks_like_an_id("0123456789abcdef0123456789ABCDEF"));
        assert!(!looks_like_an_id("ecd5"));
        assert!(!looks_like_an_id("family"));
    }

    #[test]
    fn ambiguity_lists_candidates() {
        let r = records(&[
            ("aaaa1111", "family"),
            ("aaaa2222", "work"),
            ("bbbb3333", "work"),
        ]);
        match resolve_chat(&r, "work") {
            Err(EngineError::Ambiguous { candidates, .. }) => {
                assert_eq!(candidates.len(), 2);
                assert!(candidates[0].contains("aaaa2222"));
            }
            other => panic!("expected ambiguity, got {other:?}"),
        }
        assert!(matches!(
            resolve_chat(&r, "aaaa"),
            Err(EngineError::Ambiguous { .. })
        ));
    }

    #[test]
    fn an_id_wins_over_a_title() {
        let r = records(&[("aaaa1111", "bbbb2222"), ("bbbb2222", "x")]);
        assert_eq!(resolve_chat(&r, "bbbb2222").unwrap().as_str(), "bbbb2222");
    }
}
