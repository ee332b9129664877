//! A Java service end to end (issue #24 item 6), the way seed 000's teams run one: built on the
//! controller with Maven (Debian's `maven` and its packaged plugins in /usr/share/maven-repo, so
//! it resolves offline) and a kept `~/.m2/repository`; run under `supervisord` as the app user
//! on each host; restarted by `post_release`; taken out of HAProxy around the restart and
//! health-checked until the JVM answers. Requests go through HAProxy the whole time, through a
//! 3-host rolling deploy and a rollback: none may fail.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use slipway_tests::{Fleet, Proc, Repo, free_port, hook_user_line, http_get, is_root, require, wait_for};

use crate::drain::{haproxy, request_loop, statuses};

const POM: &str = r#"<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>demo</groupId>
  <artifactId>shop</artifactId>
  <version>1.0</version>
  <packaging>jar</packaging>
  <properties>
    <maven.compiler.source>17</maven.compiler.source>
    <maven.compiler.target>17</maven.compiler.target>
    <project.build.sourceEncoding>UTF-8</project.build.sourceEncoding>
  </properties>
  <build>
    <finalName>shop</finalName>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-jar-plugin</artifactId>
        <configuration><archive><manifest><mainClass>demo.Shop</mainClass></manifest></archive></configuration>
      </plugin>
    </plugins>
  </build>
</project>
"#;

/// Maven resolves from Debian's packaged repository (no network here).
const SETTINGS: &str = r#"<settings>
  <mirrors><mirror><id>debian</id><mirrorOf>*</mirrorOf><url>file:///usr/share/maven-repo</url></mirror></mirrors>
</settings>
"#;

/// An HTTP service on $BIND:$PORT answering its version (a resource in the jar) and /health.
const SHOP: &str = r#"package demo;
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
public class Shop {
  public static void main(String[] args) throws Exception {
    byte[] version = Shop.class.getResourceAsStream("/version.txt").readAllBytes();
    HttpServer s = HttpServer.create(new InetSocketAddress(System.getenv("BIND"), Integer.parseInt(System.getenv("PORT"))), 64);
    s.createContext("/", x -> { x.getResponseHeaders().add("Connection", "close"); x.sendResponseHeaders(200, version.length); x.getResponseBody().write(version); x.close(); });
    s.createContext("/health", x -> { x.getResponseHeaders().add("Connection", "close"); byte[] ok = "ok".getBytes(StandardCharsets.UTF_8); x.sendResponseHeaders(200, ok.length); x.getResponseBody().write(ok); x.close(); });
    s.start();
  }
}
"#;

/// One supervisord for a host: the service as `www`, its socket open to `www` (post_release
/// restarts it as that user).
fn supervisord(dir: &Path, jar: &Path, bind: &str, port: u16) -> Proc {
    std::fs::create_dir_all(dir).unwrap();
    let conf = dir.join("supervisord.conf");
    std::fs::write(
        &conf,
        format!(
            "[unix_http_server]\nfile={d}/supervisor.sock\nchmod=0770\nchown=root:www\n\
             [supervisord]\nnodaemon=true\nlogfile={d}/supervisord.log\npidfile={d}/supervisord.pid\nchildlogdir={d}\n\
             [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\
             [supervisorctl]\nserverurl=unix://{d}/supervisor.sock\n\
             [program:shop]\ncommand=java -Xshare:auto -XX:TieredStopAtLevel=1 -Dsun.net.httpserver.nodelay=true -jar {jar}\nenvironment=BIND=\"{bind}\",PORT=\"{port}\"\n\
             user=www\nautostart=true\nautorestart=true\nstartsecs=0\nstopasgroup=true\nkillasgroup=true\nstopwaitsecs=5\n",
            d = dir.display(),
            jar = jar.display(),
        ),
    )
    .unwrap();
    // The socket's directory must be reachable by www.
    Command::new("chmod").args(["0755", dir.to_str().unwrap()]).status().unwrap();
    let child = Command::new("supervisord")
        .args(["-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start supervisord");
    Proc(child)
}

/// Request loops' counts added up: (total, failed, bodies seen).
fn joined(loops: Vec<std::thread::JoinHandle<(u64, u64, Vec<String>)>>) -> (u64, u64, Vec<String>) {
    let mut out = (0, 0, std::collections::BTreeSet::new());
    for l in loops {
        let (total, failed, bodies) = l.join().unwrap();
        out.0 += total;
        out.1 += failed;
        out.2.extend(bodies);
    }
    (out.0, out.1, out.2.into_iter().collect())
}

fn have(bin: &str, arg: &str) -> bool {
    Command::new(bin).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

#[test]
fn a_java_service_rolls_and_rolls_back_under_supervisord_behind_haproxy_without_a_failed_request() {
    let tools = have("mvn", "-v")
        && have("javac", "-version")
        && have("supervisord", "--version")
        && have("haproxy", "-v")
        && Path::new("/usr/share/maven-repo/org/apache/maven/plugins/maven-compiler-plugin").is_dir();
    if !require("root, maven with Debian's plugins, a JDK, supervisor and haproxy", tools && is_root()) {
        return;
    }
    let fleet = Fleet::new(3);
    let repo = Repo::new(fleet.path().join("shop"));
    repo.write("pom.xml", POM);
    repo.write("settings.xml", SETTINGS);
    repo.write("src/main/java/demo/Shop.java", SHOP);
    repo.write("src/main/resources/version.txt", "v1\n");
    repo.commit("v1");

    let hosts: Vec<String> = (1..=3).map(|i| format!("web-{i}")).collect();
    let port = free_port();
    let bind = |host: &str| format!("127.0.1.{}", &host[4..]);
    let sup = fleet.path().join("sup");
    let lb_dir = fleet.path().join("lb");
    let servers: Vec<String> = hosts.iter().map(|h| format!("{}:{port}", bind(h))).collect();
    let (front, socket, _haproxy) = haproxy(&lb_dir, &servers);
    let project = || {
        let drain = format!(
            "[rollout.drain]\nhaproxy = {{ socket = \"{}\", backend = \"web\" }}\ntimeout_secs = 10\n",
            socket.display()
        );
        let top = format!(
            "exclude = [\"src/\", \"target/\", \"pom.xml\", \"settings.xml\"]\n\
             [build]\ncache = [\"~/.m2/repository\"]\ntimeout_secs = 300\n\
             pre_deploy = [\"mvn -B -q -s settings.xml -Dmaven.repo.local=$HOME/.m2/repository -Dmaven.test.skip=true package\"]\n\
             post_deploy = [\"cp target/shop.jar shop.jar\"]\n\
             [rollout]\nstrategy = \"serial\"\n\
             health = {{ command = \"python3 -c \\\"import os,urllib.request; urllib.request.urlopen('http://127.0.1.%s:{port}/health' % os.environ['SLIPWAY_HOST'][4:], timeout=2)\\\"\", retries = 30, interval_secs = 1, timeout_secs = 3 }}\n\
             {drain}"
        );
        let target = format!(
            "{}post_release = [\"supervisorctl -c {}/$SLIPWAY_HOST/supervisord.conf restart shop\"]\n",
            hook_user_line(),
            sup.display()
        );
        fleet.apply_project_full("shop", &repo.path, &top, &target, "");
    };

    // supervisord first: its program cannot start until a release exists; the first deploy's
    // post_release starts it.
    let _sups: Vec<Proc> = hosts
        .iter()
        .map(|h| supervisord(&sup.join(h), &fleet.current(h, "shop").join("shop.jar"), &bind(h), port))
        .collect();
    for h in &hosts {
        let sock = sup.join(h).join("supervisor.sock");
        wait_for(&format!("supervisord of {h}"), || sock.exists());
    }
    project();
    let first = fleet.slipctl(&["--output", "json", "deploy", "shop", "test"]).ok().json();
    let cold_ms = first["build"][0]["elapsed_ms"].as_u64().unwrap_or(0);
    let answer = |h: &str| {
        let mut s = std::net::TcpStream::connect((bind(h).as_str(), port))?;
        use std::io::{Read, Write};
        write!(s, "GET / HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok::<String, std::io::Error>(out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
    };
    for h in &hosts {
        wait_for(&format!("the JVM on {h}"), || answer(h).is_ok_and(|b| b == "v1\n"));
    }
    wait_for("haproxy to see every server up", || statuses(&socket).iter().filter(|(_, s)| s == "UP").count() == 3);
    assert_eq!(http_get(front, "/").unwrap(), (200, "v1\n".to_owned()));

    // v2 rolls host by host under load: drained, flipped, restarted, health-checked, put back.
    repo.write("src/main/resources/version.txt", "v2\n");
    repo.commit("v2");
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..4).map(|_| request_loop(front, stop.clone())).collect();
    let doc = fleet.slipctl(&["--output", "json", "deploy", "shop", "test"]).ok().json();
    stop.store(true, Ordering::Relaxed);
    let (total, failed, bodies) = joined(loops);
    let warm_ms = doc["build"][0]["elapsed_ms"].as_u64().unwrap_or(0);
    eprintln!(
        "rolling deploy: {failed} of {total} requests through HAProxy failed; maven cold {cold_ms} ms, warm {warm_ms} ms"
    );
    assert!(total > 100, "the request loop ran ({total})");
    assert_eq!(failed, 0, "{failed} of {total} requests failed during the rolling deploy");
    assert!(bodies.iter().all(|b| b == "v1\n" || b == "v2\n"), "{bodies:?}");
    for h in &hosts {
        assert_eq!(answer(h).unwrap(), "v2\n", "{h} runs v2");
        let steps: Vec<String> = doc["hosts"].as_array().unwrap().iter().find(|x| x["host"] == *h).unwrap()["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        assert!(steps.contains(&"drain".to_owned()) && steps.contains(&"health".to_owned()), "{h}: {steps:?}");
    }

    // And back, the same way.
    let stop = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = (0..4).map(|_| request_loop(front, stop.clone())).collect();
    let back = fleet.slipctl(&["--output", "json", "rollback", "shop", "test"]).ok().json();
    stop.store(true, Ordering::Relaxed);
    let (total, failed, _) = joined(loops);
    eprintln!("rollback: {failed} of {total} requests through HAProxy failed ({} ms)", back["duration_ms"]);
    assert!(total > 100, "the request loop ran ({total})");
    assert_eq!(failed, 0, "{failed} of {total} requests failed during the rollback");
    for h in &hosts {
        assert_eq!(answer(h).unwrap(), "v1\n", "{h} runs v1 again");
    }
    // Every server back in (HAProxy's own check may still be counting a restart it saw).
    wait_for("haproxy to see every server up", || statuses(&socket).iter().all(|(_, s)| s == "UP"));
}
