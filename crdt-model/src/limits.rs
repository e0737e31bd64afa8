//! Size limits. They bound what a device writes and what it accepts to show, so that no single
//! message or field can make every replica pay for it forever.

/// Largest message text, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Largest chat title, in bytes of UTF-8.
pub const MAX_TITLE_BYTES: usize = 256;
/// Largest device display name, in bytes of UTF-8.
pub const MAX_DEVICE_NAME_BYTES: usize = 64;
/// Largest reaction, in bytes of UTF-8 (an emoji with modifiers fits easily).
pub const MAX_REACTION_BYTES: usize = 32;
/// Longest identifier of any kind (chat, message, device), in bytes.
pub const MAX_ID_BYTES: usize = 64;
