//! Kubernetes Events as the API server accepts them: an `events.k8s.io/v1` note is at most
//! 1 KiB, and an Event over that is refused (422), so a long message (an invalid key's whole
//! allowlist) would leave no Event at all. Notes are cut to fit; the status condition keeps
//! the whole message.

/// The most bytes of an Event note.
pub const NOTE_MAX: usize = 1024;

/// `text`, cut at a character boundary to fit an Event note, ending in `…` when cut.
pub fn note(text: &str) -> String {
    if text.len() <= NOTE_MAX {
        return text.to_owned();
    }
    const MORE: &str = "…";
    let mut end = NOTE_MAX - MORE.len();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MORE}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_fit_in_one_kibibyte_and_cut_whole_characters() {
        assert_eq!(note("short"), "short");
        let long = "é".repeat(1000);
        let cut = note(&long);
        assert!(cut.len() <= NOTE_MAX, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(note(&"a".repeat(NOTE_MAX)).len(), NOTE_MAX);
    }
}
