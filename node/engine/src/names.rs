//! Name rules for flows, steps, blocks and signals.

/// Longest name, in characters, for every kind of name.
pub const MAX_NAME_CHARS: usize = 63;

fn is_name(text: &str, allowed_rest: impl Fn(char) -> bool) -> bool {
    let mut chars = text.chars();
    let first_ok = chars.next().is_some_and(|first| first.is_ascii_lowercase());
    first_ok && text.len() <= MAX_NAME_CHARS && chars.all(allowed_rest)
}

/// `^[a-z][a-z0-9_-]{0,62}$`
pub fn is_flow_name(text: &str) -> bool {
    is_name(text, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
    })
}

/// `^[a-z][a-z0-9_]{0,62}$` — a CEL identifier, so `steps.<id>` works.
pub fn is_step_id(text: &str) -> bool {
    is_name(text, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'
    })
}

/// Longest model name: `model.<name>.v<version>` must stay a block name.
pub const MAX_MODEL_NAME_CHARS: usize = 40;

/// `^[a-z][a-z0-9_-]{0,39}$`
pub fn is_model_name(text: &str) -> bool {
    is_flow_name(text) && text.len() <= MAX_MODEL_NAME_CHARS
}

/// `^[a-z][a-z0-9_.-]{0,62}$` — blocks and signals.
pub fn is_block_name(text: &str) -> bool {
    is_name(text, |c| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.' || c == '-'
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert!(is_flow_name("document-intake"));
        assert!(!is_flow_name("Document"));
        assert!(!is_flow_name(&"a".repeat(64)));
        assert!(is_flow_name(&"a".repeat(63)));
        assert!(is_step_id("classify_2"));
        assert!(!is_step_id("classify-2"));
        assert!(!is_step_id("2classify"));
        assert!(is_block_name("ocr.v2-fast"));
        assert!(!is_block_name(""));
    }
}
