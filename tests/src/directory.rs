//! A real OpenLDAP server for the sign-in tests (Debian's `slapd` 2.5): its own config file,
//! an mdb database loaded with `slapadd`, listening on `ldaps://127.0.0.1:PORT` with a
//! certificate from a CA of the test's, and on plain `ldap://` on another port. Users are
//! `inetOrgPerson` entries under `ou=people`, groups `groupOfNames` under `ou=groups`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{Proc, free_port, wait_for};

pub const SUFFIX: &str = "dc=example,dc=com";
pub const ADMIN_DN: &str = "cn=admin,dc=example,dc=com";
pub const ADMIN_PASSWORD: &str = "admin-secret";
pub const SERVICE_DN: &str = "cn=slipway,ou=services,dc=example,dc=com";
pub const SERVICE_PASSWORD: &str = "slipway-service-secret";

pub struct Directory {
    /// `ldaps://` here.
    pub tls_port: u16,
    /// Plain `ldap://` here (what the product refuses unless `insecure`).
    pub plain_port: u16,
    /// The CA (PEM file) of the server's certificate.
    pub ca: PathBuf,
    _proc: Proc,
}

/// Whether slapd and slapadd are installed.
pub fn available() -> bool {
    ["/usr/sbin/slapd", "/usr/sbin/slapadd"].iter().all(|p| Path::new(p).exists())
}

/// A person: (uid, password).
pub type Person<'a> = (&'a str, &'a str);
/// A group: (cn, member uids).
pub type Group<'a> = (&'a str, &'a [&'a str]);

fn person_dn(uid: &str) -> String {
    format!("uid={uid},ou=people,{SUFFIX}")
}

impl Directory {
    /// A directory in `dir` with these people and groups, and the service account.
    pub fn start(dir: &Path, people: &[Person<'_>], groups: &[Group<'_>]) -> Directory {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let (ca, cert, key) = crate::pg::server_tls();
        for (name, text) in [("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key)] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let conf = dir.join("slapd.conf");
        std::fs::write(
            &conf,
            format!(
                "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\n\
                 pidfile {d}/slapd.pid\nTLSCACertificateFile {d}/ca.pem\nTLSCertificateFile {d}/cert.pem\n\
                 TLSCertificateKeyFile {d}/key.pem\n\
                 database mdb\nmaxsize 10485760\nsuffix \"{SUFFIX}\"\nrootdn \"{ADMIN_DN}\"\nrootpw {ADMIN_PASSWORD}\n\
                 directory {data}\n\
                 access to attrs=userPassword by self read by anonymous auth by * none\n\
                 access to * by users read by * none\n",
                d = dir.display(),
                data = data.display()
            ),
        )
        .unwrap();
        let mut ldif = format!(
            "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n\
             dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: ou=services,{SUFFIX}\nobjectClass: organizationalUnit\nou: services\n\n\
             dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: slipway\n\
             userPassword: {SERVICE_PASSWORD}\n\n"
        );
        for (uid, password) in people {
            ldif.push_str(&format!(
                "dn: {}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\nuserPassword: {password}\n\n",
                person_dn(uid)
            ));
        }
        for (cn, members) in groups {
            ldif.push_str(&format!("dn: cn={cn},ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: {cn}\n"));
            for m in *members {
                ldif.push_str(&format!("member: {}\n", person_dn(m)));
            }
            ldif.push('\n');
        }
        std::fs::write(dir.join("data.ldif"), ldif).unwrap();
        let loaded = Command::new("/usr/sbin/slapadd")
            .args(["-f", conf.to_str().unwrap(), "-l", dir.join("data.ldif").to_str().unwrap()])
            .output()
            .expect("slapadd");
        assert!(loaded.status.success(), "slapadd: {}", String::from_utf8_lossy(&loaded.stderr));
        let (tls_port, plain_port) = (free_port(), free_port());
        let urls = format!("ldaps://127.0.0.1:{tls_port}/ ldap://127.0.0.1:{plain_port}/");
        // `-d 0`: stay in the foreground (a child of the test, killed when dropped).
        let child = Command::new("/usr/sbin/slapd")
            .args(["-f", conf.to_str().unwrap(), "-h", &urls, "-d", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start slapd");
        let proc = Proc(child);
        wait_for("slapd to listen", || {
            [tls_port, plain_port].iter().all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
        });
        Directory { tls_port, plain_port, ca: dir.join("ca.pem"), _proc: proc }
    }

    /// A `[sign_in.ldap]` section for this directory over ldaps://, and then `extra`.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "[sign_in.ldap]\nurl = \"ldaps://127.0.0.1:{}\"\nca_file = \"{}\"\nbind_dn = \"{SERVICE_DN}\"\n\
             bind_password = \"{SERVICE_PASSWORD}\"\nbase_dn = \"ou=people,{SUFFIX}\"\n\
             group_base_dn = \"ou=groups,{SUFFIX}\"\n{extra}",
            self.tls_port,
            self.ca.display()
        )
    }

    /// Change the directory with an LDIF (as its admin, with `ldapmodify` over ldaps).
    pub fn modify(&self, ldif: &str) {
        use std::io::Write;
        let mut child = Command::new("ldapmodify")
            .args(["-x", "-H", &format!("ldaps://127.0.0.1:{}", self.tls_port), "-D", ADMIN_DN, "-w", ADMIN_PASSWORD])
            .env("LDAPTLS_CACERT", &self.ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ldapmodify");
        child.stdin.take().unwrap().write_all(ldif.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "ldapmodify: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// Take `uid` out of group `cn`.
    pub fn remove_member(&self, cn: &str, uid: &str) {
        self.modify(&format!(
            "dn: cn={cn},ou=groups,{SUFFIX}\nchangetype: modify\ndelete: member\nmember: {}\n",
            person_dn(uid)
        ));
    }
}
