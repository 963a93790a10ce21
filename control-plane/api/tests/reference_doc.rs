//! `docs/configuration.md` carries the reference rendered from the resource types; this
//! test fails when a field, default or doc comment changed without the page. Refresh the
//! page with `TRELLIS_BLESS=1 cargo test -p trellis-api --test reference_doc`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

const START: &str = "<!-- reference:start (generated from the resource types: TRELLIS_BLESS=1 cargo test -p trellis-api --test reference_doc) -->\n";
const END: &str = "<!-- reference:end -->";

#[test]
fn configuration_reference_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    let page = std::fs::read_to_string(&path).expect("docs/configuration.md");
    let start = page.find(START).expect("the reference start marker") + START.len();
    let end = page.find(END).expect("the reference end marker");
    let expected = trellis_api::reference::markdown();
    if page[start..end] == expected {
        return;
    }
    if std::env::var_os("TRELLIS_BLESS").is_some() {
        let fresh = format!("{}{expected}{}", &page[..start], &page[end..]);
        std::fs::write(&path, fresh).unwrap();
        return;
    }
    panic!(
        "docs/configuration.md is out of date with the resource types; refresh it with \
         `TRELLIS_BLESS=1 cargo test -p trellis-api --test reference_doc`"
    );
}
