//! SMS segments as Twilio bills them: as a segmenting encoder packs the body (GSM 03.38 for the
//! alphabet, the concatenation header of 3GPP TS 23.040 for the parts). A body is GSM-7 only
//! when every character is in the GSM basic or extension table (Twilio's detection); any other
//! character makes the whole message UCS-2. One segment holds 160 septets or 70 UTF-16 units;
//! once split, each part holds 153 or 67. An extension character (two septets: escape and code)
//! and a character outside the BMP (a surrogate pair) are never split across two parts, so a
//! part may hold one unit less: dividing the length by 153 or 67 can count a segment too few.

/// Segments an SMS body takes (an empty body is one).
pub fn sms_segments(body: &str) -> u64 {
    pack(body.chars().map(gsm_septets).collect(), body)
}

/// Segments of an SMS to a destination whose carriers take only the ASCII part of GSM-7
/// (Malaysia, as Twilio's own segment calculator counts it): any other character makes the
/// message UCS-2.
pub fn ascii_only_segments(body: &str) -> u64 {
    let gsm = body
        .chars()
        .map(|c| gsm_septets(c).filter(|_| c.is_ascii()))
        .collect();
    pack(gsm, body)
}

/// Packs `body` as GSM-7 septets when every character has them, else as UCS-2.
fn pack(gsm: Option<Vec<u64>>, body: &str) -> u64 {
    let (units, single, part) = match gsm {
        Some(septets) => (septets, 160, 153),
        None => (body.chars().map(|c| c.len_utf16() as u64).collect(), 70, 67),
    };
    if units.iter().sum::<u64>() <= single {
        return 1;
    }
    let (mut segments, mut used) = (1, 0);
    for u in units {
        // An escape or surrogate pair that would straddle the boundary opens the next part.
        if used + u > part {
            segments += 1;
            used = 0;
        }
        used += u;
    }
    segments
}

/// Septets a character takes in GSM-7, `None` when it is not in GSM 03.38 at all.
fn gsm_septets(c: char) -> Option<u64> {
    match c {
        // The extension table: escape plus code.
        '\u{0c}' | '^' | '{' | '}' | '\\' | '[' | '~' | ']' | '|' | '€' => Some(2),
        // Printable ASCII is in the basic table but for the backtick (and those above).
        '`' => None,
        ' '..='~' | '\n' | '\r' => Some(1),
        '£' | '¥' | 'è' | 'é' | 'ù' | 'ì' | 'ò' | 'Ç' | 'Ø' | 'ø' | 'Å' | 'å' | 'Δ' | 'Φ' | 'Γ'
        | 'Λ' | 'Ω' | 'Π' | 'Ψ' | 'Σ' | 'Θ' | 'Ξ' | 'Æ' | 'æ' | 'ß' | 'É' | '¤' | '¡' | 'Ä'
        | 'Ö' | 'Ñ' | 'Ü' | '§' | '¿' | 'ä' | 'ö' | 'ñ' | 'ü' | 'à' => Some(1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// GSM 03.38's basic table in code order, 0x00 to 0x7F; 0x1B (the escape) is a placeholder
    /// no body can hold.
    const BASIC: [char; 128] = [
        '@', '£', '$', '¥', 'è', 'é', 'ù', 'ì', 'ò', 'Ç', '\n', 'Ø', 'ø', '\r', 'Å', 'å', //
        'Δ', '_', 'Φ', 'Γ', 'Λ', 'Ω', 'Π', 'Ψ', 'Σ', 'Θ', 'Ξ', '\u{1b}', 'Æ', 'æ', 'ß',
        'É', //
        ' ', '!', '"', '#', '¤', '%', '&', '\'', '(', ')', '*', '+', ',', '-', '.', '/', //
        '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', ':', ';', '<', '=', '>', '?', //
        '¡', 'A', 'B', 'C', 'D', 'E', 'F', 'G', 'H', 'I', 'J', 'K', 'L', 'M', 'N', 'O', //
        'P', 'Q', 'R', 'S', 'T', 'U', 'V', 'W', 'X', 'Y', 'Z', 'Ä', 'Ö', 'Ñ', 'Ü', '§', //
        '¿', 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j', 'k', 'l', 'm', 'n', 'o', //
        'p', 'q', 'r', 's', 't', 'u', 'v', 'w', 'x', 'y', 'z', 'ä', 'ö', 'ñ', 'ü', 'à', //
    ];
    /// GSM 03.38's extension table: code after the escape, character.
    const EXTENSION: [(u8, char); 10] = [
        (0x0A, '\u{0c}'),
        (0x14, '^'),
        (0x28, '{'),
        (0x29, '}'),
        (0x2F, '\\'),
        (0x3C, '['),
        (0x3D, '~'),
        (0x3E, ']'),
        (0x40, '|'),
        (0x65, '€'),
    ];

    /// An independent reference: encodes the body into the units a modem sends (septet codes,
    /// or UTF-16 code units), groups what must travel together (escape and code, high and low
    /// surrogate), and fills parts greedily, checking that every part is within its limit and
    /// that the parts put back together are the body.
    fn reference(body: &str) -> u64 {
        let septets: Option<Vec<Vec<u16>>> = body
            .chars()
            .map(|c| {
                if c == '\u{1b}' {
                    return None;
                }
                if let Some(i) = BASIC.iter().position(|b| *b == c) {
                    return Some(vec![i as u16]);
                }
                EXTENSION
                    .iter()
                    .find(|(_, e)| *e == c)
                    .map(|(code, _)| vec![0x1B, u16::from(*code)])
            })
            .collect();
        let (groups, single, part) = match septets {
            Some(g) => (g, 160, 153),
            None => {
                let mut groups: Vec<Vec<u16>> = Vec::new();
                for unit in body.encode_utf16() {
                    // A low surrogate belongs with the high one before it.
                    match groups.last_mut() {
                        Some(g) if (0xDC00..0xE000).contains(&unit) => g.push(unit),
                        _ => groups.push(vec![unit]),
                    }
                }
                (groups, 70, 67)
            }
        };
        let all: Vec<u16> = groups.concat();
        if all.len() <= single {
            return 1;
        }
        let mut parts: Vec<Vec<u16>> = vec![Vec::new()];
        for g in &groups {
            if parts.last().map_or(0, Vec::len) + g.len() > part {
                parts.push(Vec::new());
            }
            parts.last_mut().unwrap().extend(g);
        }
        assert!(parts.iter().all(|p| !p.is_empty() && p.len() <= part));
        assert_eq!(parts.concat(), all);
        parts.len() as u64
    }

    #[test]
    fn the_gsm_alphabet_is_03_38() {
        for (code, c) in BASIC.iter().enumerate() {
            if code != 0x1B {
                assert_eq!(gsm_septets(*c), Some(1), "{c:?}");
            }
        }
        for (_, c) in EXTENSION {
            assert_eq!(gsm_septets(c), Some(2), "{c:?}");
        }
        let known = BASIC.len() - 1 + EXTENSION.len();
        let all = (0..=0x10FFFF).filter_map(char::from_u32);
        assert_eq!(all.filter(|c| gsm_septets(*c).is_some()).count(), known);
    }

    #[test]
    fn counts_segments_as_they_are_packed() {
        let a = |n| "a".repeat(n);
        for (body, segments, why) in [
            (String::new(), 1, "an empty body is one segment"),
            (a(160), 1, "160 septets fit one"),
            (a(161), 2, "161 are split"),
            (a(306), 2, "153 a part"),
            (a(307), 3, ""),
            ("€".repeat(80), 1, "extension characters take two septets"),
            ("€".repeat(81), 2, "76 escapes a part: 152 septets"),
            ("€".repeat(152), 2, ""),
            ("€".repeat(153), 3, "306 septets, but 152 a part"),
            (
                format!("{}€{}", a(152), a(152)),
                3,
                "the escape opens part two",
            ),
            (
                format!("{}€{}", a(151), a(152)),
                2,
                "the escape ends part one",
            ),
            (format!("{}€", a(158)), 1, "exactly 160"),
            (format!("{}€", a(159)), 2, "161"),
            ("é".repeat(160), 1, "é is in GSM-7"),
            (format!("{}`", a(69)), 1, "a backtick is not: 70 UCS-2"),
            (format!("{}ł", a(70)), 2, "one ł makes it all UCS-2"),
            ("ł".repeat(70), 1, ""),
            ("ł".repeat(71), 2, ""),
            ("ł".repeat(134), 2, "67 a part"),
            ("ł".repeat(135), 3, ""),
            ("😀".repeat(35), 1, "an emoji is two UTF-16 units"),
            ("😀".repeat(36), 2, "33 pairs a part: 66 units"),
            ("😀".repeat(67), 3, "134 units, but 66 a part"),
            (
                format!("{}😀{}", "ł".repeat(66), "ł".repeat(66)),
                3,
                "the pair opens part two",
            ),
            (
                format!("{}😀{}", "ł".repeat(65), "ł".repeat(67)),
                2,
                "the pair ends part one",
            ),
            (format!("{}😀", "ł".repeat(68)), 1, "exactly 70"),
            (format!("{}😀", "ł".repeat(69)), 2, "71"),
            (
                format!("{}€", "ł".repeat(69)),
                1,
                "€ in a UCS-2 message is one unit",
            ),
        ] {
            assert_eq!(sms_segments(&body), segments, "{why}: {body}");
            assert_eq!(reference(&body), segments, "reference, {why}: {body}");
        }
    }

    /// One pair at every offset from the start of the body to past the second part, followed
    /// by every length of filler up to a segment and more: each place an escape or a surrogate
    /// pair can straddle, with every total around 160/161, 306/307, 70/71 and 134/135 units.
    #[test]
    fn a_pair_at_every_boundary_is_never_split() {
        for (filler, special) in [("a", "€"), ("a", "{"), ("ł", "😀"), ("a", "😀"), ("ł", "€")]
        {
            for before in 0..=170 {
                for after in 0..=170 {
                    let body =
                        format!("{}{special}{}", filler.repeat(before), filler.repeat(after));
                    assert_eq!(
                        sms_segments(&body),
                        reference(&body),
                        "{before} {special} {after}"
                    );
                }
            }
        }
    }

    /// Pieces that put escapes and surrogate pairs at every boundary: runs of one-unit
    /// characters as long as a part or a segment, give or take two.
    fn piece() -> impl Strategy<Value = String> {
        let run = prop::sample::select(vec![
            1usize, 2, 3, 64, 65, 66, 67, 68, 69, 70, 71, 72, 150, 151, 152, 153, 154, 155, 158,
            159, 160, 161, 162,
        ]);
        let one = prop::sample::select(vec![
            "a", "é", "@", "\n", " ", "Δ", "ł", "`", "€", "{", "\\", "😀", "𝄞", "中",
        ]);
        prop_oneof![
            (run, prop::sample::select(vec!["a", "é", "ł"])).prop_map(|(n, c)| c.repeat(n)),
            one.prop_map(str::to_owned),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn segments_match_a_reference_packer(pieces in prop::collection::vec(piece(), 0..8)) {
            let body = pieces.concat();
            prop_assert_eq!(sms_segments(&body), reference(&body));
        }

        /// Several pairs, each a few units either side of a part boundary.
        #[test]
        fn pairs_near_the_boundaries_are_never_split(
            filler in prop::sample::select(vec!["a", "é", "ł"]),
            runs in prop::collection::vec(
                (
                    prop::sample::select(vec![0usize, 1, 2, 63, 64, 65, 66, 67, 68, 69, 70, 71, 149, 150, 151, 152, 153, 154, 158, 159, 160, 161]),
                    prop::sample::select(vec!["€", "^", "|", "😀", "𝄞", ""]),
                ),
                1..5,
            ),
        ) {
            let body: String = runs.iter().map(|(n, special)| format!("{}{special}", filler.repeat(*n))).collect();
            prop_assert_eq!(sms_segments(&body), reference(&body));
        }

        #[test]
        fn any_text_matches_the_reference(body in "\\PC{0,400}") {
            prop_assert_eq!(sms_segments(&body), reference(&body));
        }
    }
}
