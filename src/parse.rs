//! HTML parsing with `scraper`: a page's text in, owned data out.
//!
//! `scraper::Html` is not `Send`, so everything here is synchronous and returns plain
//! `String`s; the caller runs it on a blocking thread, off the threads that drive I/O.
//! This module also owns the job's `selectors` mini-language:
//! `{"name": "css selector", "name2": "css selector@attribute"}`, plus `@abs:attribute`
//! (the attribute as an absolute URL) and `css selector::text` (the element's own text).

use std::collections::{BTreeMap, HashSet};
use std::sync::LazyLock;

use scraper::{ElementRef, Html, Selector};
use url::Url;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SelectorError {
    #[error("selectors is not valid JSON: {0}")]
    Json(String),
    #[error("selectors must be a JSON object of name -> CSS selector, got {0}")]
    NotAnObject(&'static str),
    #[error("selector {name:?} must be a string, got {found}")]
    NotAString { name: String, found: &'static str },
    #[error("selector names must not be empty (the name is the key of `data` in results)")]
    EmptyName,
    #[error("selector {name:?} = {selector:?}: invalid CSS: {reason}")]
    InvalidCss {
        name: String,
        selector: String,
        reason: String,
    },
}

/// One named extraction: all elements matching `css`, and what to take of each.
#[derive(Debug)]
struct Extraction {
    name: String,
    css: Selector,
    take: Take,
}

#[derive(Debug, PartialEq)]
enum Take {
    /// The element's text, its descendants' included.
    Text,
    /// `::text`: the element's own text nodes only (Scrapy's convention), without a
    /// child's text such as a heading's permalink sign.
    OwnText,
    /// `@name`: the attribute as written.
    Attribute(String),
    /// `@abs:name`: the attribute as a URL resolved against the page (jsoup's
    /// convention), for `href` and `src` values written relative.
    AbsoluteUrl(String),
}

/// Written after a selector, takes the element's own text.
const OWN_TEXT: &str = "::text";

/// A job's compiled selectors.
#[derive(Debug, Default)]
pub struct SelectorSet {
    extractions: Vec<Extraction>,
}

impl SelectorSet {
    pub fn from_json(json: &str) -> Result<SelectorSet, SelectorError> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| SelectorError::Json(e.to_string()))?;
        let object = match value {
            serde_json::Value::Object(object) => object,
            // Writing SQL NULL as the JSON text 'null' is an easy mistake; it means "none".
            serde_json::Value::Null => return Ok(SelectorSet::default()),
            other => return Err(SelectorError::NotAnObject(json_kind(&other))),
        };
        let mut extractions = Vec::with_capacity(object.len());
        for (name, spec) in object {
            if name.trim().is_empty() {
                return Err(SelectorError::EmptyName);
            }
            let spec = match spec {
                serde_json::Value::String(spec) => spec,
                other => {
                    return Err(SelectorError::NotAString {
                        name,
                        found: json_kind(&other),
                    })
                }
            };
            let (css, take) = match spec.strip_suffix(OWN_TEXT) {
                Some(css) => (css, Take::OwnText),
                None => match split_attribute(&spec) {
                    (css, Some(attribute)) => match attribute.strip_prefix("abs:") {
                        Some(attribute) => (css, Take::AbsoluteUrl(attribute.to_owned())),
                        None => (css, Take::Attribute(attribute.to_owned())),
                    },
                    (css, None) => (css, Take::Text),
                },
            };
            let invalid = |reason: String| SelectorError::InvalidCss {
                name: name.clone(),
                selector: spec.clone(),
                reason,
            };
            if css.trim().is_empty() {
                return Err(invalid("empty selector".to_owned()));
            }
            let css = Selector::parse(css).map_err(|_| invalid(css_error(css)))?;
            extractions.push(Extraction { name, css, take });
        }
        Ok(SelectorSet { extractions })
    }

    /// Parses optional selectors JSON (NULL in the table means none).
    pub fn from_optional_json(json: Option<&str>) -> Result<SelectorSet, SelectorError> {
        json.map_or_else(|| Ok(SelectorSet::default()), SelectorSet::from_json)
    }
}

/// What is wrong with `css`, which scraper refused, in words and on one line (scraper's
/// own error says "please report this to the developer" for most mistakes, on two lines).
fn css_error(css: &str) -> String {
    use cssparser::{BasicParseErrorKind, ParseErrorKind};
    use selectors::parser::{ParseRelative, SelectorList, SelectorParseErrorKind as Kind};

    // `#1abc` is a hash token but not an id: the selector would read as empty. Said
    // before parsing again, which would only give that.
    if let Some(id) = css
        .split('#')
        .skip(1)
        .find(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    {
        let id: String = id
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '-' | '_'))
            .collect();
        return format!(
            "'#{id}' is not an id selector: an id starting with a digit is written [id=\"{id}\"]"
        );
    }
    let mut parser = cssparser::Parser::new(css);
    let kind = match SelectorList::parse(&scraper::selector::Parser, &mut parser, ParseRelative::No)
    {
        Ok(_) => return "not accepted by the HTML selector engine".to_owned(),
        Err(error) => error.kind,
    };
    // The parser stops just after the token it could not take; cssparser keeps no token
    // in its errors, so it is read back from the text.
    let stop = parser.position().byte_index().min(css.len());
    let before = css.get(..stop).unwrap_or(css).trim_end();
    let last_token = || {
        let start = before
            .rfind(|c: char| c.is_whitespace() || ",>+~".contains(c))
            .map_or(0, |i| i + 1);
        let token = &before[start..];
        if token.is_empty() {
            before.chars().last().map(String::from).unwrap_or_default()
        } else {
            token.to_owned()
        }
    };
    match kind {
        ParseErrorKind::Basic(BasicParseErrorKind::UnexpectedToken) => {
            format!("unexpected '{}'", last_token())
        }
        ParseErrorKind::Basic(BasicParseErrorKind::EndOfInput) => {
            "the selector ends where more was expected".to_owned()
        }
        ParseErrorKind::Basic(_) => "not a selector".to_owned(),
        ParseErrorKind::Custom(kind) => match kind {
            Kind::ClassNeedsIdent => "'.' must be followed by a class name".to_owned(),
            Kind::EmptySelector if before.ends_with(',') => "empty selector after ','".to_owned(),
            Kind::EmptySelector if css.trim_start().starts_with(['>', '+', '~']) => {
                "a combinator ('>', '+', '~') must come between two selectors".to_owned()
            }
            Kind::EmptySelector => "empty selector".to_owned(),
            Kind::DanglingCombinator => {
                "a combinator ('>', '+', '~' or a space) must be followed by a selector".to_owned()
            }
            Kind::UnsupportedPseudoClassOrElement => {
                let name = last_token();
                let name = &name[name.find(':').unwrap_or(0)..];
                if name.starts_with("::") {
                    format!("unknown pseudo-element {name}")
                } else if name.starts_with(':') {
                    format!("unknown pseudo-class {name}")
                } else {
                    "unknown pseudo-class or pseudo-element".to_owned()
                }
            }
            Kind::NoIdentForPseudo => "':' must be followed by a pseudo-class name".to_owned(),
            Kind::PseudoElementExpectedColon | Kind::PseudoElementExpectedIdent => {
                "'::' must be followed by a pseudo-element name".to_owned()
            }
            Kind::NoQualifiedNameInAttributeSelector => {
                "'[' must be followed by an attribute name".to_owned()
            }
            Kind::UnexpectedTokenInAttributeSelector | Kind::BadValueInAttr => {
                "an attribute selector is [name] or [name OP value], OP one of = ~= |= ^= $= *="
                    .to_owned()
            }
            Kind::ExpectedNamespace
            | Kind::ExpectedBarInAttr
            | Kind::InvalidQualNameInAttr
            | Kind::ExplicitNamespaceUnexpectedToken => {
                "namespaces ('|') are not supported".to_owned()
            }
            _ => format!("'{}' is not supported there", last_token()),
        },
    }
}

/// `"img.hero@src"` → (`"img.hero"`, `Some("src")`). Only a trailing `@name` made of
/// attribute-name characters counts, so CSS such as `a[href*="@"]` is left whole.
fn split_attribute(spec: &str) -> (&str, Option<&str>) {
    match spec.rsplit_once('@') {
        Some((css, attr))
            if !attr.is_empty()
                && attr
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '.')) =>
        {
            (css, Some(attr))
        }
        _ => (spec, None),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// What a page yields.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ParsedPage {
    pub title: Option<String>,
    pub description: Option<String>,
    /// Absolute http(s) URLs, fragment removed, first occurrence kept, in page order.
    pub links: Vec<String>,
    /// Selector name → every match, whitespace-collapsed, in document order.
    pub data: BTreeMap<String, Vec<String>>,
}

fn selector(css: &str) -> Selector {
    Selector::parse(css).expect("built-in selector is valid")
}

/// The HTML parser's time grows with the square of the nesting depth (each start tag
/// scans the stack of open elements): 100 000 nested `<div>`s take minutes. Real pages
/// stay far below this depth.
pub const MAX_NESTING: usize = 5_000;

/// Where (a byte offset) the document first nests deeper than [`MAX_NESTING`], if it
/// does. An estimate without parsing: start tags open, end tags close; void elements,
/// self-closed tags, and the tags pages often leave open (`p`, `li`, `td`, …, which the
/// parser closes by itself) are not counted.
fn nesting_cut(html: &str) -> Option<usize> {
    const NOT_COUNTED: [&str; 24] = [
        "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr", "p", "li", "dt", "dd", "tr", "td", "th", "option", "tbody", "thead",
        "colgroup",
    ];
    let bytes = html.as_bytes();
    let mut depth = 0usize;
    let mut at = 0;
    while let Some(offset) = bytes[at..].iter().position(|&b| b == b'<') {
        let start = at + offset;
        at = start + 1;
        let closing = bytes.get(at) == Some(&b'/');
        let name_start = at + usize::from(closing);
        let name_len = bytes[name_start..]
            .iter()
            .take_while(|b| b.is_ascii_alphanumeric())
            .count();
        if name_len == 0 || !bytes[name_start].is_ascii_alphabetic() {
            continue;
        }
        let name = html[name_start..name_start + name_len].to_ascii_lowercase();
        if NOT_COUNTED.contains(&name.as_str()) {
            continue;
        }
        if closing {
            depth = depth.saturating_sub(1);
            continue;
        }
        let tag_end = bytes[name_start..]
            .iter()
            .position(|&b| b == b'>')
            .map_or(bytes.len(), |p| name_start + p);
        if bytes[..tag_end].ends_with(b"/") {
            continue;
        }
        depth += 1;
        if depth > MAX_NESTING {
            return Some(start);
        }
    }
    None
}

static TITLE: LazyLock<Selector> = LazyLock::new(|| selector("title"));
static META: LazyLock<Selector> = LazyLock::new(|| selector("meta[content]"));
static BASE: LazyLock<Selector> = LazyLock::new(|| selector("base[href]"));
static LINKS: LazyLock<Selector> = LazyLock::new(|| selector("a[href], area[href]"));

/// Extracts title, description, links and the selectors' data from an HTML document.
/// `page_url` is where the document was fetched from (after redirects).
pub fn parse_html(html: &str, page_url: &Url, selectors: &SelectorSet) -> ParsedPage {
    let html = match nesting_cut(html) {
        Some(cut) => {
            tracing::warn!(
                parsed_bytes = cut,
                of = html.len(),
                "the page nests elements more than {MAX_NESTING} deep; parsing only the part before that"
            );
            &html[..cut]
        }
        None => html,
    };
    let document = Html::parse_document(html);

    let title = document
        .select(&TITLE)
        .next()
        .map(text_of)
        .filter(|t| !t.is_empty());

    let description = description(&document);

    // A <base href> changes what relative links are relative to.
    let base = document
        .select(&BASE)
        .next()
        .and_then(|b| b.value().attr("href"))
        .and_then(|href| page_url.join(href.trim()).ok())
        .unwrap_or_else(|| page_url.clone());

    let mut seen = HashSet::new();
    let mut links = Vec::new();
    for element in document.select(&LINKS) {
        let Some(href) = element.value().attr("href").map(str::trim) else {
            continue;
        };
        if href.is_empty() || href.starts_with('#') {
            continue;
        }
        let Ok(mut link) = base.join(href) else {
            continue;
        };
        if !matches!(link.scheme(), "http" | "https") {
            continue;
        }
        link.set_fragment(None);
        let link = String::from(link);
        if seen.insert(link.clone()) {
            links.push(link);
        }
    }

    let data = selectors
        .extractions
        .iter()
        .map(|extraction| {
            let values = document
                .select(&extraction.css)
                .filter_map(|element| match &extraction.take {
                    Take::Text => Some(text_of(element)),
                    Take::OwnText => Some(collapse_whitespace(
                        &element
                            .children()
                            .filter_map(|child| child.value().as_text().map(|t| &**t))
                            .collect::<String>(),
                    )),
                    Take::Attribute(name) => element.value().attr(name).map(collapse_whitespace),
                    // A value that is no URL is skipped, like a missing attribute.
                    Take::AbsoluteUrl(name) => element
                        .value()
                        .attr(name)
                        .and_then(|value| base.join(value.trim()).ok())
                        .map(String::from),
                })
                .collect();
            (extraction.name.clone(), values)
        })
        .collect();

    ParsedPage {
        title,
        description,
        links,
        data,
    }
}

/// `<meta name="description">`, falling back to Open Graph's `og:description`.
fn description(document: &Html) -> Option<String> {
    let mut og = None;
    for meta in document.select(&META) {
        let element = meta.value();
        let content = element.attr("content").map(collapse_whitespace);
        if element
            .attr("name")
            .is_some_and(|n| n.eq_ignore_ascii_case("description"))
        {
            return content.filter(|c| !c.is_empty());
        }
        if og.is_none()
            && element
                .attr("property")
                .is_some_and(|p| p.eq_ignore_ascii_case("og:description"))
        {
            og = content;
        }
    }
    og.filter(|c| !c.is_empty())
}

fn text_of(element: ElementRef<'_>) -> String {
    collapse_whitespace(&element.text().collect::<String>())
}

/// Trims and turns every run of whitespace into one space, as a browser renders text.
fn collapse_whitespace(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Decodes an HTML body to text: the charset in `Content-Type` if it names a known
/// encoding, else a `<meta charset>` (or `http-equiv`) in the first 1024 bytes, else UTF-8;
/// a byte-order mark wins over all of them, as browsers do. Undecodable bytes become
/// U+FFFD, so the result is always valid UTF-8.
pub fn decode_html(body: &[u8], content_type: Option<&str>) -> String {
    let declared = content_type
        .and_then(charset_param)
        .and_then(|label| encoding_rs::Encoding::for_label(label.as_bytes()));
    let encoding = declared
        .or_else(|| meta_charset(&body[..body.len().min(1024)]))
        .unwrap_or(encoding_rs::UTF_8);
    let (text, _, _) = encoding.decode(body);
    text.into_owned()
}

/// `text/html; charset="Shift_JIS"` → `Shift_JIS`.
fn charset_param(content_type: &str) -> Option<&str> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches(['"', '\'']))
    })
}

/// The encoding a `<meta charset=…>` or `<meta http-equiv content="…charset=…">` names,
/// found by a byte scan of the document's start (the HTML spec's "prescan", simplified):
/// only inside `<meta …>` tags, so "charset=" in text or scripts does not count.
fn meta_charset(head: &[u8]) -> Option<&'static encoding_rs::Encoding> {
    let lower: Vec<u8> = head.to_ascii_lowercase();
    let mut from = 0;
    while let Some(at) = find(&lower[from..], b"<meta") {
        let start = from + at + b"<meta".len();
        let end = lower[start..]
            .iter()
            .position(|&b| b == b'>')
            .map_or(lower.len(), |n| start + n);
        from = end;
        if let Some(encoding) = charset_in(&lower[start..end]) {
            return Some(encoding);
        }
    }
    None
}

/// The first `charset=NAME` inside one tag's bytes that names a usable encoding.
fn charset_in(tag: &[u8]) -> Option<&'static encoding_rs::Encoding> {
    let mut from = 0;
    while let Some(at) = find(&tag[from..], b"charset") {
        let mut i = from + at + b"charset".len();
        from = i;
        while tag.get(i).is_some_and(|b| b.is_ascii_whitespace()) {
            i += 1;
        }
        if tag.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        while tag
            .get(i)
            .is_some_and(|b| b.is_ascii_whitespace() || *b == b'"' || *b == b'\'')
        {
            i += 1;
        }
        let end = tag[i..]
            .iter()
            .position(|b| b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b';' | b'/'))
            .map_or(tag.len(), |n| i + n);
        match encoding_rs::Encoding::for_label(&tag[i..end]) {
            // The "replacement" encoding decodes anything to one U+FFFD: never from a page.
            Some(encoding) if encoding == encoding_rs::REPLACEMENT => continue,
            // A page cannot really be UTF-16 if its bytes spelled this out in ASCII.
            Some(encoding)
                if encoding == encoding_rs::UTF_16LE || encoding == encoding_rs::UTF_16BE =>
            {
                return Some(encoding_rs::UTF_8)
            }
            Some(encoding) => return Some(encoding),
            None => continue,
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Whether a response with this Content-Type is parsed as HTML. A missing type is parsed
/// (many small servers omit it); anything else non-HTML is stored without parsing.
pub fn is_html(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    matches!(mime.as_str(), "text/html" | "application/xhtml+xml" | "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_cut_where_it_passes_the_limit_and_ordinary_pages_are_not() {
        let deep = format!("<title>t</title>{}x", "<div>".repeat(MAX_NESTING + 10));
        let cut = nesting_cut(&deep).expect("too deep");
        assert_eq!(cut, "<title>t</title>".len() + MAX_NESTING * "<div>".len());
        let open_paragraphs = format!("<body>{}</body>", "<p>text<br><img src=x/>".repeat(50_000));
        assert_eq!(nesting_cut(&open_paragraphs), None);
        let balanced = "<div><span>a</span></div>".repeat(50_000);
        assert_eq!(nesting_cut(&balanced), None);
        let url = Url::parse("http://a/").unwrap();
        let page = parse_html(&deep, &url, &SelectorSet::from_optional_json(None).unwrap());
        assert_eq!(page.title.as_deref(), Some("t"));
    }

    fn page(html: &str, selectors: &str) -> ParsedPage {
        let set = SelectorSet::from_json(selectors).unwrap();
        parse_html(
            html,
            &Url::parse("http://example.com/dir/page.html").unwrap(),
            &set,
        )
    }

    #[test]
    fn title_description_and_links_are_extracted_and_resolved() {
        let p = page(
            r##"<html><head><title>  Hello
               World </title><meta name="Description" content=" A page "></head>
               <body><a href="b.html#top">b</a><a href="/c">c</a><a href="b.html">again</a>
               <a href="mailto:x@y">mail</a><a href="#frag">self</a>
               <a href="https://other.org/x?q=1#f">o</a><area href="d.html"></body></html>"##,
            "{}",
        );
        assert_eq!(p.title.as_deref(), Some("Hello World"));
        assert_eq!(p.description.as_deref(), Some("A page"));
        assert_eq!(
            p.links,
            vec![
                "http://example.com/dir/b.html",
                "http://example.com/c",
                "https://other.org/x?q=1",
                "http://example.com/dir/d.html",
            ]
        );
    }

    #[test]
    fn base_href_changes_link_resolution() {
        let p = page(
            r#"<head><base href="/root/"></head><a href="x">x</a>"#,
            "{}",
        );
        assert_eq!(p.links, vec!["http://example.com/root/x"]);
    }

    #[test]
    fn selectors_take_text_or_attributes_in_order() {
        let p = page(
            r#"<span class="price"> $1 </span><span class="price">$2</span>
               <img class="hero" src="/a.png"><img class="hero">"#,
            r#"{"price": "span.price", "image": "img.hero@src", "none": "div.missing"}"#,
        );
        assert_eq!(p.data["price"], vec!["$1", "$2"]);
        assert_eq!(p.data["image"], vec!["/a.png"]);
        assert_eq!(p.data["none"], Vec::<String>::new());
    }

    #[test]
    fn own_text_and_absolute_urls_are_offered_beside_text_and_attributes() {
        let p = page(
            r##"<h1>Library <b>reference</b><a class="headerlink" href="#top">¶</a></h1>
               <link rel="stylesheet" href="../_static/x.css">
               <img src="/a.png"><img src=" b.png "><img src="http://[bad"><img>"##,
            r#"{"h1": "h1", "own": "h1::text", "css": "link@href", "css_abs": "link@abs:href",
                "images": "img@abs:src"}"#,
        );
        assert_eq!(p.data["h1"], vec!["Library reference¶"]);
        assert_eq!(p.data["own"], vec!["Library"]);
        assert_eq!(p.data["css"], vec!["../_static/x.css"]);
        assert_eq!(p.data["css_abs"], vec!["http://example.com/_static/x.css"]);
        // Relative to the page; a value that is no URL is skipped, like a missing one.
        assert_eq!(
            p.data["images"],
            vec!["http://example.com/a.png", "http://example.com/dir/b.png"]
        );
        // `::text` alone selects nothing: refused like an empty selector.
        assert!(SelectorSet::from_json(r#"{"t": "::text"}"#).is_err());
    }

    #[test]
    fn invalid_css_is_explained_in_words_on_one_line() {
        for (css, reason) in [
            ("span..price", "'.' must be followed by a class name"),
            ("h1:nope", "unknown pseudo-class :nope"),
            ("p::nope", "unknown pseudo-element ::nope"),
            (
                ">",
                "a combinator ('>', '+', '~') must come between two selectors",
            ),
            ("h1,", "empty selector after ','"),
            ("h1, , p", "empty selector after ','"),
            (
                "#1abc",
                "'#1abc' is not an id selector: an id starting with a digit is written [id=\"1abc\"]",
            ),
            (
                "a >",
                "a combinator ('>', '+', '~' or a space) must be followed by a selector",
            ),
            ("a||b", "namespaces ('|') are not supported"),
        ] {
            let json = serde_json::json!({ "x": css }).to_string();
            let err = SelectorSet::from_json(&json).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("selector \"x\" = {css:?}: invalid CSS: {reason}")
            );
        }
        assert_eq!(
            SelectorSet::from_json(r#"{" ": "h1"}"#).unwrap_err(),
            SelectorError::EmptyName
        );
    }

    #[test]
    fn invalid_selectors_say_which_and_why() {
        let err = SelectorSet::from_json(r#"{"p": "span..price"}"#).unwrap_err();
        assert!(
            matches!(err, SelectorError::InvalidCss { ref name, .. } if name == "p"),
            "{err}"
        );
        assert!(err.to_string().contains("span..price"));
        assert!(matches!(
            SelectorSet::from_json("{"),
            Err(SelectorError::Json(_))
        ));
        assert!(matches!(
            SelectorSet::from_json("[1]"),
            Err(SelectorError::NotAnObject(_))
        ));
        assert!(matches!(
            SelectorSet::from_json(r#"{"a": 1}"#),
            Err(SelectorError::NotAString { .. })
        ));
    }

    #[test]
    fn attribute_suffix_does_not_eat_css_containing_at() {
        assert_eq!(split_attribute("img@src"), ("img", Some("src")));
        assert_eq!(
            split_attribute(r#"a[href*="@"]"#),
            (r#"a[href*="@"]"#, None)
        );
        assert_eq!(split_attribute("a@data-id"), ("a", Some("data-id")));
    }

    #[test]
    fn charsets_are_taken_from_the_header_then_meta_then_utf8() {
        let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode("<title>日本語</title>");
        assert!(decode_html(&sjis, Some("text/html; charset=Shift_JIS")).contains("日本語"));
        let latin1 = b"<title>caf\xe9</title>";
        assert!(decode_html(latin1, Some("text/html; charset=\"ISO-8859-1\"")).contains("café"));
        let meta = b"<html><head><meta charset='windows-1252'><title>na\xefve</title>";
        assert!(decode_html(meta, Some("text/html")).contains("naïve"));
        let http_equiv =
            b"<meta http-equiv=\"Content-Type\" content=\"text/html; charset=iso-8859-1\"><p>\xe9";
        assert!(decode_html(http_equiv, None).contains('é'));
        // An unknown declared charset falls through to meta, then UTF-8, lossily.
        assert_eq!(
            decode_html(b"ok \xff", Some("text/html; charset=x-bogus")),
            "ok \u{fffd}"
        );
        assert_eq!(decode_html("é".as_bytes(), None), "é");
        // Only <meta> tags count, and never the "replacement" encoding.
        let text = "<title>é</title><p>set charset=iso-8859-2 like this</p>".as_bytes();
        assert!(decode_html(text, None).contains("<title>é</title>"));
        let hostile = "<meta charset=iso-2022-kr><title>é</title>".as_bytes();
        assert!(decode_html(hostile, None).contains("<title>é</title>"));
    }

    #[test]
    fn html_detection_by_content_type() {
        assert!(is_html(Some("text/html; charset=utf-8")));
        assert!(is_html(None));
        assert!(!is_html(Some("application/pdf")));
        assert!(!is_html(Some("image/png")));
    }
}
