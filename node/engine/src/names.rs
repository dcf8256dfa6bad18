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

/// Most bytes of a user-supplied text an error message quotes.
pub const MAX_QUOTED_BYTES: usize = 64;

/// `text` quoted for an error message: in full when short, else its first
/// [`MAX_QUOTED_BYTES`] bytes (cut at a character boundary) and its length,
/// as in `"aaaa…"… (10240 bytes)`. A client's error carries the message in
/// a header, so echoing a 10 KB name whole would hide the error itself.
pub fn quote_bounded(text: &str) -> String {
    if text.len() <= MAX_QUOTED_BYTES {
        return format!("{text:?}");
    }
    let mut cut = MAX_QUOTED_BYTES;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}… ({} bytes)", &text[..cut], text.len())
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

/// Most labels a worker declares or a step requires: a worker offers a slot
/// for every subset of its labels (`label_subsets`), so this stays small.
pub const MAX_LABELS: usize = 4;

/// A label key: `^[a-z][a-z0-9_.-]{0,62}$`, as block names.
pub fn is_label_key(text: &str) -> bool {
    is_block_name(text)
}

/// A label value: `^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`.
pub fn is_label_value(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphanumeric())
        && text.len() <= MAX_NAME_CHARS
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-')
}

/// What placement matches a task on: its block, and the worker labels it
/// requires as `block[key=value,...]` (keys in order). Names and values
/// cannot hold `[`, `=` or `,`, so the text is unambiguous.
pub fn placement_key(block: &str, labels: &std::collections::BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return block.to_string();
    }
    let pairs: Vec<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    format!("{block}[{}]", pairs.join(","))
}

/// Every subset of `labels` (the empty one first): the label requirements a
/// worker with these labels satisfies.
pub fn label_subsets(
    labels: &std::collections::BTreeMap<String, String>,
) -> Vec<std::collections::BTreeMap<String, String>> {
    let pairs: Vec<(&String, &String)> = labels.iter().take(MAX_LABELS).collect();
    (0u32..1 << pairs.len())
        .map(|mask| {
            pairs
                .iter()
                .enumerate()
                .filter(|(bit, _)| mask & (1 << bit) != 0)
                .map(|(_, (key, value))| ((*key).clone(), (*value).clone()))
                .collect()
        })
        .collect()
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
        assert!(is_label_key("site") && !is_label_key("Site") && !is_label_key("a=b"));
        assert!(
            is_label_value("North-1.b")
                && !is_label_value("")
                && !is_label_value("a,b")
                && !is_label_value("[x")
        );
    }

    #[test]
    fn quoted_text_is_bounded() {
        assert_eq!(quote_bounded("intake"), "\"intake\"");
        assert_eq!(
            quote_bounded(&"a".repeat(MAX_QUOTED_BYTES)),
            format!("{:?}", "a".repeat(MAX_QUOTED_BYTES))
        );
        let long = "b".repeat(10_240);
        let quoted = quote_bounded(&long);
        assert_eq!(
            quoted,
            format!("{:?}… (10240 bytes)", "b".repeat(MAX_QUOTED_BYTES))
        );
        // Cut at a character boundary: 'é' is two bytes, so 64 bytes is 32 of them.
        let accented = "é".repeat(100);
        assert_eq!(
            quote_bounded(&accented),
            format!("{:?}… (200 bytes)", "é".repeat(32))
        );
        let mixed = format!("a{}", "é".repeat(100));
        assert!(
            quote_bounded(&mixed).ends_with("… (201 bytes)"),
            "{}",
            quote_bounded(&mixed)
        );
    }

    #[test]
    fn placement_keys_and_the_requirements_a_worker_satisfies() {
        let labels: std::collections::BTreeMap<String, String> = [
            ("site".to_string(), "north".to_string()),
            ("gpu".to_string(), "yes".to_string()),
        ]
        .into_iter()
        .collect();
        assert_eq!(placement_key("ocr", &Default::default()), "ocr");
        assert_eq!(placement_key("ocr", &labels), "ocr[gpu=yes,site=north]");
        let keys: Vec<String> = label_subsets(&labels)
            .iter()
            .map(|subset| placement_key("ocr", subset))
            .collect();
        assert_eq!(
            keys,
            [
                "ocr",
                "ocr[gpu=yes]",
                "ocr[site=north]",
                "ocr[gpu=yes,site=north]"
            ]
        );
        assert_eq!(label_subsets(&Default::default()).len(), 1);
    }
}
