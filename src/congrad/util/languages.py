"""Language codes: which values of ``lang`` (data files) and of the config's language lists
congrad accepts, and the closest valid code when one is not.

In: a code as written by the user. Out: :func:`check_language_code`, ``None`` for a valid
code, else a one-line message naming the code and suggesting the closest valid one.

Valid: an ISO 639-1 code (two lower-case letters, all 184 below: ``en``, ``zh``), alone or
as the first part of a BCP-47 style tag with a script, a region or both (``zh-Hant``,
``pt-BR``, ``es-419``, ``zh-Hant-TW``; those parts in any case, as BCP-47 allows). Not
valid, but recognised for the suggestion: ISO 639-2 codes (``eng``, ``deu``, ``ger``),
English names (``german``), a few retired or country codes (``iw``, ``jp``) and ``_`` for
``-`` (``pt_BR``). One code names one language everywhere, so ``EN`` is refused rather than
read as ``en``, which the built-in data and the other rows use.
"""

from __future__ import annotations

import difflib
import re

LANGUAGES: dict[str, tuple[str, ...]] = {
    # ISO 639-1 code: (English names, "; "-separated; then its ISO 639-2 codes, T before B)
    "aa": ("Afar", "aar"),
    "ab": ("Abkhazian", "abk"),
    "ae": ("Avestan", "ave"),
    "af": ("Afrikaans", "afr"),
    "ak": ("Akan", "aka"),
    "am": ("Amharic", "amh"),
    "an": ("Aragonese", "arg"),
    "ar": ("Arabic", "ara"),
    "as": ("Assamese", "asm"),
    "av": ("Avaric", "ava"),
    "ay": ("Aymara", "aym"),
    "az": ("Azerbaijani", "aze"),
    "ba": ("Bashkir", "bak"),
    "be": ("Belarusian", "bel"),
    "bg": ("Bulgarian", "bul"),
    "bh": ("Bihari", "bih"),
    "bi": ("Bislama", "bis"),
    "bm": ("Bambara", "bam"),
    "bn": ("Bengali; Bangla", "ben"),
    "bo": ("Tibetan", "bod", "tib"),
    "br": ("Breton", "bre"),
    "bs": ("Bosnian", "bos"),
    "ca": ("Catalan; Valencian", "cat"),
    "ce": ("Chechen", "che"),
    "ch": ("Chamorro", "cha"),
    "co": ("Corsican", "cos"),
    "cr": ("Cree", "cre"),
    "cs": ("Czech", "ces", "cze"),
    "cu": ("Church Slavic; Old Church Slavonic", "chu"),
    "cv": ("Chuvash", "chv"),
    "cy": ("Welsh", "cym", "wel"),
    "da": ("Danish", "dan"),
    "de": ("German", "deu", "ger"),
    "dv": ("Dhivehi; Divehi; Maldivian", "div"),
    "dz": ("Dzongkha", "dzo"),
    "ee": ("Ewe", "ewe"),
    "el": ("Greek", "ell", "gre"),
    "en": ("English", "eng"),
    "eo": ("Esperanto", "epo"),
    "es": ("Spanish; Castilian", "spa"),
    "et": ("Estonian", "est"),
    "eu": ("Basque", "eus", "baq"),
    "fa": ("Persian; Farsi", "fas", "per"),
    "ff": ("Fulah", "ful"),
    "fi": ("Finnish", "fin"),
    "fj": ("Fijian", "fij"),
    "fo": ("Faroese", "fao"),
    "fr": ("French", "fra", "fre"),
    "fy": ("Western Frisian; Frisian", "fry"),
    "ga": ("Irish", "gle"),
    "gd": ("Scottish Gaelic; Gaelic", "gla"),
    "gl": ("Galician", "glg"),
    "gn": ("Guarani", "grn"),
    "gu": ("Gujarati", "guj"),
    "gv": ("Manx", "glv"),
    "ha": ("Hausa", "hau"),
    "he": ("Hebrew", "heb"),
    "hi": ("Hindi", "hin"),
    "ho": ("Hiri Motu", "hmo"),
    "hr": ("Croatian", "hrv"),
    "ht": ("Haitian; Haitian Creole", "hat"),
    "hu": ("Hungarian", "hun"),
    "hy": ("Armenian", "hye", "arm"),
    "hz": ("Herero", "her"),
    "ia": ("Interlingua", "ina"),
    "id": ("Indonesian", "ind"),
    "ie": ("Interlingue; Occidental", "ile"),
    "ig": ("Igbo", "ibo"),
    "ii": ("Sichuan Yi; Nuosu", "iii"),
    "ik": ("Inupiaq", "ipk"),
    "io": ("Ido", "ido"),
    "is": ("Icelandic", "isl", "ice"),
    "it": ("Italian", "ita"),
    "iu": ("Inuktitut", "iku"),
    "ja": ("Japanese", "jpn"),
    "jv": ("Javanese", "jav"),
    "ka": ("Georgian", "kat", "geo"),
    "kg": ("Kongo", "kon"),
    "ki": ("Kikuyu; Gikuyu", "kik"),
    "kj": ("Kuanyama; Kwanyama", "kua"),
    "kk": ("Kazakh", "kaz"),
    "kl": ("Kalaallisut; Greenlandic", "kal"),
    "km": ("Khmer; Central Khmer", "khm"),
    "kn": ("Kannada", "kan"),
    "ko": ("Korean", "kor"),
    "kr": ("Kanuri", "kau"),
    "ks": ("Kashmiri", "kas"),
    "ku": ("Kurdish", "kur"),
    "kv": ("Komi", "kom"),
    "kw": ("Cornish", "cor"),
    "ky": ("Kirghiz; Kyrgyz", "kir"),
    "la": ("Latin", "lat"),
    "lb": ("Luxembourgish; Letzeburgesch", "ltz"),
    "lg": ("Ganda; Luganda", "lug"),
    "li": ("Limburgish; Limburgan", "lim"),
    "ln": ("Lingala", "lin"),
    "lo": ("Lao", "lao"),
    "lt": ("Lithuanian", "lit"),
    "lu": ("Luba-Katanga", "lub"),
    "lv": ("Latvian", "lav"),
    "mg": ("Malagasy", "mlg"),
    "mh": ("Marshallese", "mah"),
    "mi": ("Maori", "mri", "mao"),
    "mk": ("Macedonian", "mkd", "mac"),
    "ml": ("Malayalam", "mal"),
    "mn": ("Mongolian", "mon"),
    "mr": ("Marathi", "mar"),
    "ms": ("Malay", "msa", "may"),
    "mt": ("Maltese", "mlt"),
    "my": ("Burmese", "mya", "bur"),
    "na": ("Nauru", "nau"),
    "nb": ("Norwegian Bokmal; Bokmal", "nob"),
    "nd": ("North Ndebele", "nde"),
    "ne": ("Nepali", "nep"),
    "ng": ("Ndonga", "ndo"),
    "nl": ("Dutch; Flemish", "nld", "dut"),
    "nn": ("Norwegian Nynorsk; Nynorsk", "nno"),
    "no": ("Norwegian", "nor"),
    "nr": ("South Ndebele", "nbl"),
    "nv": ("Navajo; Navaho", "nav"),
    "ny": ("Chichewa; Chewa; Nyanja", "nya"),
    "oc": ("Occitan", "oci"),
    "oj": ("Ojibwa", "oji"),
    "om": ("Oromo", "orm"),
    "or": ("Oriya; Odia", "ori"),
    "os": ("Ossetian; Ossetic", "oss"),
    "pa": ("Punjabi; Panjabi", "pan"),
    "pi": ("Pali", "pli"),
    "pl": ("Polish", "pol"),
    "ps": ("Pashto; Pushto", "pus"),
    "pt": ("Portuguese", "por"),
    "qu": ("Quechua", "que"),
    "rm": ("Romansh", "roh"),
    "rn": ("Rundi; Kirundi", "run"),
    "ro": ("Romanian; Moldavian", "ron", "rum"),
    "ru": ("Russian", "rus"),
    "rw": ("Kinyarwanda", "kin"),
    "sa": ("Sanskrit", "san"),
    "sc": ("Sardinian", "srd"),
    "sd": ("Sindhi", "snd"),
    "se": ("Northern Sami", "sme"),
    "sg": ("Sango", "sag"),
    "si": ("Sinhala; Sinhalese", "sin"),
    "sk": ("Slovak", "slk", "slo"),
    "sl": ("Slovenian; Slovene", "slv"),
    "sm": ("Samoan", "smo"),
    "sn": ("Shona", "sna"),
    "so": ("Somali", "som"),
    "sq": ("Albanian", "sqi", "alb"),
    "sr": ("Serbian", "srp"),
    "ss": ("Swati; Swazi", "ssw"),
    "st": ("Southern Sotho; Sesotho", "sot"),
    "su": ("Sundanese", "sun"),
    "sv": ("Swedish", "swe"),
    "sw": ("Swahili", "swa"),
    "ta": ("Tamil", "tam"),
    "te": ("Telugu", "tel"),
    "tg": ("Tajik", "tgk"),
    "th": ("Thai", "tha"),
    "ti": ("Tigrinya", "tir"),
    "tk": ("Turkmen", "tuk"),
    "tl": ("Tagalog; Filipino", "tgl"),
    "tn": ("Tswana; Setswana", "tsn"),
    "to": ("Tonga; Tongan", "ton"),
    "tr": ("Turkish", "tur"),
    "ts": ("Tsonga", "tso"),
    "tt": ("Tatar", "tat"),
    "tw": ("Twi", "twi"),
    "ty": ("Tahitian", "tah"),
    "ug": ("Uighur; Uyghur", "uig"),
    "uk": ("Ukrainian", "ukr"),
    "ur": ("Urdu", "urd"),
    "uz": ("Uzbek", "uzb"),
    "ve": ("Venda", "ven"),
    "vi": ("Vietnamese", "vie"),
    "vo": ("Volapuk", "vol"),
    "wa": ("Walloon", "wln"),
    "wo": ("Wolof", "wol"),
    "xh": ("Xhosa", "xho"),
    "yi": ("Yiddish", "yid"),
    "yo": ("Yoruba", "yor"),
    "za": ("Zhuang; Chuang", "zha"),
    "zh": ("Chinese", "zho", "chi"),
    "zu": ("Zulu", "zul"),
}

# Retired ISO 639-1 codes and country codes often written for a language.
_MISTAKEN = {
    "iw": "he",
    "in": "id",
    "ji": "yi",
    "jw": "jv",
    "mo": "ro",
    "jp": "ja",
    "cn": "zh",
    "kr": "ko",
    "gr": "el",
    "cz": "cs",
    "dk": "da",
    "ua": "uk",
    "vn": "vi",
}

_TAG = re.compile(r"(?P<code>[a-z]{2})(-[A-Za-z]{4})?(-(?:[A-Za-z]{2}|[0-9]{3}))?")
_FORMAT = (
    "use an ISO 639-1 code: two lower-case letters such as en, de or zh, optionally with a "
    "script or region (zh-Hant, pt-BR)"
)


def check_language_code(code: str) -> str | None:
    """``None`` when ``code`` is a valid language code, else what is wrong and the fix.

    >>> check_language_code("pt-BR") is None
    True
    >>> check_language_code("german")
    "'german' is not a valid language code; did you mean 'de' (German)?"
    """
    found = _TAG.fullmatch(code)
    if found and found["code"] in LANGUAGES:
        return None
    close = suggest_language_codes(code)
    if not close:
        return f"{code!r} is not a valid language code; {_FORMAT}"
    named = " or ".join(f"{c!r} ({_name(c)})" for c in close)
    return f"{code!r} is not a valid language code; did you mean {named}?"


def suggest_language_codes(code: str) -> list[str]:
    """Up to three valid codes close to ``code``, best first (empty: none is close).

    >>> suggest_language_codes("eng"), suggest_language_codes("pt_br"), suggest_language_codes("xx")
    (['en'], ['pt-br'], [])
    """
    text = code.strip().replace("_", "-")
    first, _, rest = text.partition("-")
    tail = f"-{rest}" if rest else ""
    key = first.lower()
    spelled = _spellings()
    if key in LANGUAGES:
        codes = [key]
    elif key in _MISTAKEN or key in spelled:
        codes = [_MISTAKEN.get(key) or spelled[key]]
    else:
        prefixed = [c for name, c in spelled.items() if len(key) >= 3 and name.startswith(key)]
        close = difflib.get_close_matches(key, [*LANGUAGES, *spelled], n=3, cutoff=0.75)
        codes = prefixed or [spelled.get(name, name) for name in close]
    codes = list(dict.fromkeys(codes))[:3]
    if tail and all(_TAG.fullmatch(c + tail) for c in codes):
        return [c + tail for c in codes]
    return codes


def _name(tag: str) -> str:
    return LANGUAGES[tag.partition("-")[0]][0].split("; ")[0]


def _spellings() -> dict[str, str]:
    """Lower-case English names and ISO 639-2 codes -> ISO 639-1 code."""
    spelled: dict[str, str] = {}
    for code, (names, *alpha3) in LANGUAGES.items():
        for name in [*names.lower().split("; "), *alpha3]:
            spelled.setdefault(name, code)
    return spelled
