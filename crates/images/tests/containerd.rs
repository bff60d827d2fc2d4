//! The images in a real containerd: a private daemon (with its CRI plugin) as a child process,
//! our archives imported with `images::import`, and containers run from them with `ctr run`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SETUP: &str = "run scripts/setup (as root) to install containerd, runc and busybox-static";

fn on_path(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]).any(|dir| dir.join(program).is_file())
}

/// Fails, rather than skips, without the tools: CI installs them, so their absence is a broken
/// set-up that must not pass silently.
fn require_environment() {
    let uid = std::fs::metadata("/proc/self").map(|meta| meta.uid()).unwrap_or(u32::MAX);
    assert_eq!(uid, 0, "running containers with containerd needs root; run the tests as root");
    for program in ["containerd", "ctr", "runc", "containerd-shim-runc-v2"] {
        assert!(on_path(program), "{program} is not installed: {SETUP}");
    }
    assert!(Path::new(images::DEFAULT_BUSYBOX).is_file(), "{} is missing: {SETUP}", images::DEFAULT_BUSYBOX);
}

/// A containerd of our own: its root, state and socket in a temporary directory.
struct Containerd {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Containerd {
    fn start() -> Containerd {
        // Under /tmp rather than target/: a unix socket path must stay under 108 bytes.
        let dir = std::env::temp_dir().join(format!("berth-images-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cni")).unwrap();
        let socket = dir.join("containerd.sock");
        let d = dir.display();
        // The CRI plugin stays on (it is what the agent uses): it must see imported images.
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{d}/cni"
"#,
            pause = images::PAUSE_IMAGE
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("starting containerd: {error}; {SETUP}"));
        let mut containerd = Containerd { child, dir, socket };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = containerd.child.try_wait().unwrap() {
                panic!("containerd exited ({status}):\n{}", containerd.log());
            }
            if containerd.socket.exists() && containerd.ctr(&["version"]).status.success() {
                return containerd;
            }
            assert!(Instant::now() < deadline, "containerd did not answer within 30 s:\n{}", containerd.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command.arg("--address").arg(&self.socket).args(["--namespace", images::NAMESPACE]).args(args).stdin(Stdio::null());
        command
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(args).output().unwrap()
    }

    fn ctr_ok(&self, args: &[&str]) -> String {
        let output = self.ctr(args);
        assert!(
            output.status.success(),
            "ctr {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    fn ids(&self, args: &[&str]) -> Vec<String> {
        String::from_utf8_lossy(&self.ctr(args).stdout).lines().map(str::to_string).filter(|id| !id.is_empty()).collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Tasks first: their shims outlive containerd, and their rootfs mounts live in our dir.
        for id in self.ids(&["tasks", "ls", "-q"]) {
            self.ctr(&["tasks", "kill", "--all", "--signal", "SIGKILL", &id]);
            self.ctr(&["tasks", "delete", "--force", &id]);
        }
        for id in self.ids(&["containers", "ls", "-q"]) {
            self.ctr(&["containers", "delete", &id]);
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("containerd log ({}):\n{}", self.dir.display(), self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The `ctr images ls` row of `name`: (digest, labels).
fn image_row(listing: &str, name: &str) -> Option<(String, String)> {
    listing.lines().skip(1).find_map(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        (columns.first() == Some(&name)).then(|| (columns.get(2).unwrap_or(&"").to_string(), columns.last().unwrap_or(&"").to_string()))
    })
}

#[tokio::test]
async fn images_import_and_run_in_containerd() {
    require_environment();
    let containerd = Containerd::start();
    let busybox_path = Path::new(images::DEFAULT_BUSYBOX);
    let busybox_tar = containerd.dir.join("busybox.tar");
    let pause_tar = containerd.dir.join("pause.tar");
    let busybox = images::busybox_image(images::BUSYBOX_IMAGE, busybox_path).unwrap().write(&busybox_tar).unwrap();
    let pause = images::pause_image(images::PAUSE_IMAGE, busybox_path).unwrap().write(&pause_tar).unwrap();

    // Twice: importing again (as the agent does at every start) must succeed and change nothing.
    for _ in 0..2 {
        for archive in [&busybox_tar, &pause_tar] {
            images::import(&containerd.socket, archive).await.unwrap_or_else(|error| panic!("{error}\n{}", containerd.log()));
        }
    }

    let listing = containerd.ctr_ok(&["images", "ls"]);
    for image in [&busybox, &pause] {
        let (digest, _) = image_row(&listing, &image.reference).unwrap_or_else(|| panic!("{} not listed:\n{listing}", image.reference));
        assert_eq!(digest, image.manifest_digest, "{listing}");
        assert_eq!(listing.lines().filter(|line| line.starts_with(&format!("{} ", image.reference))).count(), 1);
        // Unpacked into the CRI plugin's snapshotter: a committed snapshot keyed by the chain
        // ID, which for a single layer is its diff ID (our layer is uncompressed: its digest).
        let snapshots = containerd.ctr_ok(&["snapshots", "--snapshotter", images::SNAPSHOTTER, "ls"]);
        assert!(snapshots.lines().any(|line| line.starts_with(&image.layer_digest) && line.contains("Committed")), "{} not unpacked:\n{snapshots}", image.reference);
    }

    // The CRI plugin picks imports up from containerd's events and adds its image-ID reference
    // (the config digest): the sign that pods can use the image without a pull.
    let deadline = Instant::now() + Duration::from_secs(10);
    for image in [&busybox, &pause] {
        loop {
            let listing = containerd.ctr_ok(&["images", "ls"]);
            if let Some((digest, labels)) = image_row(&listing, &image.config_digest) {
                assert_eq!(digest, image.manifest_digest);
                assert!(labels.contains("io.cri-containerd.image=managed"), "{listing}");
                break;
            }
            assert!(Instant::now() < deadline, "the CRI plugin did not register {}:\n{listing}", image.reference);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let script = "echo hello from busybox; id; id nobody; test -k /tmp && echo sticky tmp; test -d /var/www && echo www; which env; pwd";
    let output = containerd.ctr_ok(&["run", "--rm", images::BUSYBOX_IMAGE, "images-test-busybox", "sh", "-c", script]);
    assert_eq!(
        output,
        "hello from busybox\nuid=0(root) gid=0(root) groups=0(root)\nuid=65534(nobody) gid=65534(nobody) groups=65534(nobody)\nsticky tmp\nwww\n/usr/bin/env\n/\n"
    );

    // The pause container, read-only as the CRI plugin runs sandboxes, must end promptly on
    // SIGTERM although it is PID 1.
    let id = "images-test-pause";
    let mut run = containerd.ctr_command(&["run", "--rm", "--read-only", images::PAUSE_IMAGE, id]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    // Its trap is set once the shell has started its sleep: two processes in the task.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let processes = containerd.ctr(&["tasks", "ps", id]);
        if processes.status.success() && String::from_utf8_lossy(&processes.stdout).lines().skip(1).count() >= 2 {
            break;
        }
        if let Some(status) = run.try_wait().unwrap() {
            panic!("the pause container exited before it was signalled ({status})");
        }
        assert!(Instant::now() < deadline, "the pause container did not start within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    let user = containerd.ctr_ok(&["tasks", "exec", "--exec-id", "whoami", id, "/bin/busybox", "id", "-u"]);
    assert_eq!(user.trim(), "65534", "the sandbox runs as nobody");
    let signalled = Instant::now();
    containerd.ctr_ok(&["tasks", "kill", id]);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(signalled.elapsed() < Duration::from_secs(10), "the pause container ignored SIGTERM for 10 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    assert!(status.success(), "the pause container exited with {status}");
    assert!(took < Duration::from_secs(3), "the pause container took {took:?} to stop on SIGTERM");
    eprintln!("pause stopped {took:?} after SIGTERM");
}

#[tokio::test]
async fn import_explains_a_missing_daemon_or_archive() {
    let missing = Path::new("/nonexistent/containerd.sock");
    let error = images::import(missing, Path::new("/nonexistent/image.tar")).await.unwrap_err();
    assert!(matches!(error, images::Error::NoSocket(_)), "{error}");
    assert!(error.to_string().contains("is containerd running"), "{error}");
    // A socket path that exists (any file will do for this check) but an archive that does not.
    let error = images::import(Path::new("/proc/self/exe"), Path::new("/nonexistent/image.tar")).await.unwrap_err();
    assert!(matches!(error, images::Error::Read { .. }), "{error}");
}
