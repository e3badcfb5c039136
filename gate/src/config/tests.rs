use super::*;

const GOOD: &str = r#"
listen = "127.0.0.1:0"
trust_domain = "example.org"
max_body = 65536

[[upstream]]
name = "crm"
kind = "mcp"
path = "/mcp/crm"
url = "http://127.0.0.1:9000/mcp"
[upstream.tools]
read_contact = "crm.read"
[upstream.credential]
provider = "crm-token"
scopes = ["contacts.read"]

[[upstream]]
name = "files"
kind = "http"
path = "/files"
url = "https://files.example.com/api/"
[[upstream.route]]
method = "get"
path = "/docs/{id}"
tool = "files.read"
resource = "doc/{id}"
[upstream.credential]
provider = "files"
query = "api_key"
"#;

fn err(text: &str) -> String {
    Config::parse(text, &Flags::default())
        .unwrap_err()
        .to_string()
}

#[test]
fn a_whole_configuration_is_read() {
    let c = Config::parse(GOOD, &Flags::default()).unwrap();
    assert_eq!(c.max_body, 65536);
    assert!(c.require_destinations);
    let crm = c.upstream_named("crm").unwrap();
    assert_eq!(crm.tools["read_contact"], "crm.read");
    assert_eq!(crm.host, "127.0.0.1");
    assert_eq!(crm.port, 9000);
    let cred = crm.credential.as_ref().unwrap();
    assert_eq!(
        cred.inject,
        Inject::Header {
            name: http::header::AUTHORIZATION,
            prefix: "Bearer ".into()
        }
    );
    let files = c.upstream_named("files").unwrap();
    assert_eq!(files.port, 443);
    assert_eq!(files.routes[0].method, "GET");
    assert_eq!(
        files.credential.as_ref().unwrap().inject,
        Inject::Query("api_key".into())
    );
    assert_eq!(c.upstream_for("/mcp/crm").unwrap().name, "crm");
    assert_eq!(c.upstream_for("/files/docs/1").unwrap().name, "files");
    assert!(c.upstream_for("/filesystem").is_none());
    assert!(c.upstream_for("/").is_none());
}

#[test]
fn flags_win_over_the_file() {
    let f = Flags {
        listen: Some("127.0.0.1:7000".into()),
        ..Flags::default()
    };
    assert_eq!(Config::parse(GOOD, &f).unwrap().listen.port(), 7000);
}

#[test]
fn each_mistake_is_named() {
    assert!(err("nope = 1").contains("unknown field"));
    let up = |extra: &str| {
        format!(
            "[[upstream]]\nname = \"x\"\nkind = \"mcp\"\npath = \"/x\"\nurl = \"http://127.0.0.1:1\"\n{extra}"
        )
    };
    assert!(Config::parse(&up(""), &Flags::default()).is_ok());
    assert!(
        err(
            "[[upstream]]\nname = \"x\"\nkind = \"mcp\"\npath = \"/x\"\nurl = \"http://10.0.0.1/\""
        )
        .contains("loopback")
    );
    assert!(
        err(
            "[[upstream]]\nname = \"x\"\nkind = \"mcp\"\npath = \"x\"\nurl = \"http://127.0.0.1/\""
        )
        .contains("upstream.path")
    );
    assert!(err("[[upstream]]\nname = \"x y\"\nkind = \"mcp\"\npath = \"/x\"\nurl = \"http://127.0.0.1/\"").contains("upstream.name"));
    assert!(
        err(
            "[[upstream]]\nname = \"x\"\nkind = \"ftp\"\npath = \"/x\"\nurl = \"http://127.0.0.1/\""
        )
        .contains("kind")
    );
    assert!(err(&up("[upstream.tools]\na = \"Not A Tool!\"")).contains("upstream.tools"));
    assert!(err(&up("[upstream.methods]\n\"tools/call\" = \"a.b\"")).contains("upstream.methods"));
    assert!(err(&up("[upstream.credential]\nscopes = []")).contains("exactly one"));
    assert!(
        err(&up(
            "[upstream.credential]\nprovider = \"p\"\nheader = \"x-key\"\nquery = \"k\""
        ))
        .contains("not both")
    );
    assert!(
        err(&up(
            "[upstream.credential]\nprovider = \"p\"\nheader = \"content-length\""
        ))
        .contains("cannot carry")
    );
    assert!(
        err(&up("[upstream.credential]\nfile = \"/nonexistent/secret\"")).contains("not a file")
    );
    assert!(
        err(&up(
            "[[upstream.route]]\nmethod = \"GET\"\npath = \"/a\"\ntool = \"a.b\""
        ))
        .contains("routes are for")
    );
    assert!(err("[[upstream]]\nname = \"x\"\nkind = \"http\"\npath = \"/x\"\nurl = \"http://127.0.0.1/\"").contains("at least one"));
    let two = format!(
        "{}\n{}",
        up(""),
        up("").replace("name = \"x\"", "name = \"y\"")
    );
    assert!(err(&two).contains("path used by another"));
    assert!(err("upstream_timeout = \"0s\"").contains("upstream_timeout"));
    assert!(err("max_body = 0").contains("max_body"));
    let route = |path: &str, res: &str| {
        format!(
            "[[upstream]]\nname = \"x\"\nkind = \"http\"\npath = \"/x\"\nurl = \"http://127.0.0.1/\"\n[[upstream.route]]\nmethod = \"GET\"\npath = \"{path}\"\ntool = \"a.b\"\nresource = \"{res}\""
        )
    };
    assert!(err(&route("/a/*/b", "r")).contains("last segment"));
    assert!(err(&route("/a/{id}", "r/{other}")).contains("not in the path"));
    assert!(err(&route("/a/x{id}", "r")).contains("mixes"));
}
