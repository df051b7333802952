//! Which `+1` numbers a price for `"+1"` covers. The North American Numbering Plan spans the
//! US, Canada and some twenty other countries and territories that Twilio prices as destinations
//! of their own (Jamaica, the Bahamas, the Dominican Republic, ...); only the area code tells them
//! apart. So a prefix shorter than `+1` and an area code (`"+1"`, `"+18"`) prices only the US and
//! Canadian area codes listed in [`US_CA`]. Every other area code needs an entry of its own
//! (`"+1876"`) or is refused: other countries; the US territories (Puerto Rico, the US Virgin
//! Islands, Guam, the Northern Mariana Islands, American Samoa), which libphonenumber keeps as
//! regions of their own and whose Twilio price is not established here, so they fail closed too;
//! toll-free and other non-geographic codes, shared by the whole plan; and any area code opened
//! after this list was made. The list holds the codes a `"+1"` price may cover, not the ones it
//! may not, so that a code missing from it fails closed.
//!
//! Data derived from libphonenumber's `resources/PhoneNumberMetadata.xml` (google/libphonenumber
//! at commit f7e3e88c, 2026-07-17; extracted 2026-12-07): [`US_CA`] is every 3-digit code that
//! starts some 10-digit number matching the `fixedLine` or `mobile` pattern of region US or CA;
//! [`ELSEWHERE`] is the same for the other `countryCode="1"` regions, with the US and CA
//! toll-free, premium-rate, personal and VoIP codes, only to name them in a refusal.

/// What a `+1` number's first three digits are, for the refusal that names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Area {
    /// A US or Canadian geographic area code: a price for `"+1"` covers it.
    UsCa,
    /// Another NANP country or territory (its ISO 3166 code, its name), or a non-geographic code
    /// (no country, what it is).
    Elsewhere(u16, &'static str, &'static str),
    /// Not an area code in the list (unassigned, new, or fewer than three digits).
    Unknown(String),
}

/// The area of a `+1` number, from the digits after the `1`.
pub(super) fn area(national: &str) -> Area {
    let code = national
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<u16>().ok());
    let Some(code) = code else {
        return Area::Unknown(national.to_owned());
    };
    if US_CA.binary_search(&code).is_ok() {
        return Area::UsCa;
    }
    match ELSEWHERE.binary_search_by_key(&code, |(c, _, _)| *c) {
        Ok(i) => {
            let (c, region, name) = ELSEWHERE[i];
            Area::Elsewhere(c, region, name)
        }
        Err(_) => Area::Unknown(code.to_string()),
    }
}

const TOLL_FREE: &str = "toll-free, shared by every NANP country";
const PREMIUM: &str = "premium-rate";
const PERSONAL: &str = "personal communications, not tied to a country";
const NON_GEOGRAPHIC: &str = "non-geographic (Canada)";

/// Geographic area codes of the US (359) and Canada (55), sorted.
const US_CA: [u16; 414] = [
    201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 212, 213, 214, 215, 216, 217, 218, 219, 220,
    223, 224, 225, 226, 227, 228, 229, 231, 234, 235, 236, 239, 240, 248, 249, 250, 251, 252, 253,
    254, 256, 257, 260, 262, 263, 267, 269, 270, 272, 274, 276, 279, 281, 283, 289, 301, 302, 303,
    304, 305, 306, 307, 308, 309, 310, 312, 313, 314, 315, 316, 317, 318, 319, 320, 321, 323, 324,
    325, 326, 327, 329, 330, 331, 332, 334, 336, 337, 339, 341, 343, 346, 347, 350, 351, 352, 353,
    354, 360, 361, 363, 364, 365, 367, 368, 369, 380, 382, 385, 386, 401, 402, 403, 404, 405, 406,
    407, 408, 409, 410, 412, 413, 414, 415, 416, 417, 418, 419, 423, 424, 425, 428, 430, 431, 432,
    434, 435, 437, 438, 440, 442, 443, 445, 447, 448, 450, 458, 463, 464, 468, 469, 470, 472, 474,
    475, 478, 479, 480, 484, 501, 502, 503, 504, 505, 506, 507, 508, 509, 510, 512, 513, 514, 515,
    516, 517, 518, 519, 520, 530, 531, 534, 539, 540, 541, 548, 551, 557, 559, 561, 562, 563, 564,
    567, 570, 571, 572, 573, 574, 575, 579, 580, 581, 582, 584, 585, 586, 587, 601, 602, 603, 604,
    605, 606, 607, 608, 609, 610, 612, 613, 614, 615, 616, 617, 618, 619, 620, 623, 626, 628, 629,
    630, 631, 636, 639, 640, 641, 645, 646, 647, 650, 651, 656, 657, 659, 660, 661, 662, 667, 669,
    672, 678, 680, 681, 682, 683, 686, 689, 701, 702, 703, 704, 705, 706, 707, 708, 709, 712, 713,
    714, 715, 716, 717, 718, 719, 720, 724, 725, 726, 727, 728, 730, 731, 732, 734, 737, 738, 740,
    742, 743, 747, 748, 753, 754, 757, 760, 762, 763, 765, 769, 770, 771, 772, 773, 774, 775, 778,
    779, 780, 781, 782, 785, 786, 801, 802, 803, 804, 805, 806, 807, 808, 810, 812, 813, 814, 815,
    816, 817, 818, 819, 820, 821, 825, 826, 828, 830, 831, 832, 835, 838, 839, 840, 843, 845, 847,
    848, 850, 854, 856, 857, 858, 859, 860, 862, 863, 864, 865, 867, 870, 872, 873, 878, 879, 901,
    902, 903, 904, 905, 906, 907, 908, 909, 910, 912, 913, 914, 915, 916, 917, 918, 919, 920, 925,
    928, 929, 930, 931, 934, 936, 937, 938, 940, 941, 942, 943, 945, 947, 948, 949, 951, 952, 954,
    956, 959, 970, 971, 972, 973, 975, 978, 979, 980, 983, 984, 985, 986, 989,
];

/// The other area codes libphonenumber knows in the plan, sorted: region, name.
const ELSEWHERE: [(u16, &str, &str); 54] = [
    (242, "BS", "the Bahamas"),
    (246, "BB", "Barbados"),
    (264, "AI", "Anguilla"),
    (268, "AG", "Antigua and Barbuda"),
    (284, "VG", "the British Virgin Islands"),
    (340, "VI", "the US Virgin Islands (a US territory)"),
    (345, "KY", "the Cayman Islands"),
    (441, "BM", "Bermuda"),
    (473, "GD", "Grenada"),
    (500, "", PERSONAL),
    (521, "", PERSONAL),
    (522, "", PERSONAL),
    (523, "", PERSONAL),
    (524, "", PERSONAL),
    (525, "", PERSONAL),
    (526, "", PERSONAL),
    (527, "", PERSONAL),
    (528, "", PERSONAL),
    (529, "", PERSONAL),
    (532, "", PERSONAL),
    (533, "", PERSONAL),
    (544, "", PERSONAL),
    (566, "", PERSONAL),
    (577, "", PERSONAL),
    (588, "", PERSONAL),
    (600, "", NON_GEOGRAPHIC),
    (622, "", PERSONAL),
    (633, "", PERSONAL),
    (649, "TC", "the Turks and Caicos Islands"),
    (658, "JM", "Jamaica"),
    (664, "MS", "Montserrat"),
    (670, "MP", "the Northern Mariana Islands (a US territory)"),
    (671, "GU", "Guam (a US territory)"),
    (684, "AS", "American Samoa (a US territory)"),
    (721, "SX", "Sint Maarten"),
    (758, "LC", "Saint Lucia"),
    (767, "DM", "Dominica"),
    (784, "VC", "Saint Vincent and the Grenadines"),
    (787, "PR", "Puerto Rico (a US territory)"),
    (800, "", TOLL_FREE),
    (809, "DO", "the Dominican Republic"),
    (829, "DO", "the Dominican Republic"),
    (833, "", TOLL_FREE),
    (844, "", TOLL_FREE),
    (849, "DO", "the Dominican Republic"),
    (855, "", TOLL_FREE),
    (866, "", TOLL_FREE),
    (868, "TT", "Trinidad and Tobago"),
    (869, "KN", "Saint Kitts and Nevis"),
    (876, "JM", "Jamaica"),
    (877, "", TOLL_FREE),
    (888, "", TOLL_FREE),
    (900, "", PREMIUM),
    (939, "PR", "Puerto Rico (a US territory)"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tables_are_sorted_and_apart() {
        assert!(US_CA.windows(2).all(|w| w[0] < w[1]));
        assert!(ELSEWHERE.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(
            ELSEWHERE
                .iter()
                .all(|(c, _, _)| US_CA.binary_search(c).is_err())
        );
        assert!(
            US_CA
                .iter()
                .chain(ELSEWHERE.iter().map(|(c, _, _)| c))
                .all(|c| (200..1000).contains(c))
        );
    }

    #[test]
    fn only_us_and_canadian_area_codes_are_us_ca() {
        for us_ca in [
            "4155550100",
            "2125550100",
            "4165550100",
            "6045550100",
            "8675550100",
        ] {
            assert_eq!(area(us_ca), Area::UsCa, "{us_ca}");
        }
        assert_eq!(area("8765550100"), Area::Elsewhere(876, "JM", "Jamaica"));
        assert_eq!(area("6585550100"), Area::Elsewhere(658, "JM", "Jamaica"));
        assert_eq!(
            area("2425550100"),
            Area::Elsewhere(242, "BS", "the Bahamas")
        );
        for dominican in ["809", "829", "849"] {
            assert!(matches!(
                area(&format!("{dominican}5550100")),
                Area::Elsewhere(_, "DO", _)
            ));
        }
        for (territory, region) in [
            ("787", "PR"),
            ("939", "PR"),
            ("340", "VI"),
            ("671", "GU"),
            ("670", "MP"),
            ("684", "AS"),
        ] {
            assert!(
                matches!(area(&format!("{territory}5550100")), Area::Elsewhere(_, r, _) if r == region),
                "{territory}"
            );
        }
        assert!(matches!(
            area("8005550100"),
            Area::Elsewhere(800, "", TOLL_FREE)
        ));
        assert_eq!(
            area("5551234567"),
            Area::Unknown("555".into()),
            "555 is no area code"
        );
        assert_eq!(area("41"), Area::Unknown("41".into()));
        assert_eq!(area(""), Area::Unknown(String::new()));
    }
}
