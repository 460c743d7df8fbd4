//! The transport conformance kit against this crate's own built `.so`, loaded through the same
//! version and layout checks as the server's loader.

use sockhost_plugin_api::conformance::{Target, cdylib};

fn template() -> Target {
    Target::new(cdylib("sockhost_transport_template"), "template", "")
}

sockhost_plugin_api::transport_suite!(template);
