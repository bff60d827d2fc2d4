//! `berth images`: builds the node's pause and busybox images, imports them into containerd, and
//! serves archives as a registry.

use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Subcommand)]
pub enum ImagesCommand {
    /// Write an image as an OCI image-layout archive, built from the host's static busybox.
    Build {
        /// Which image.
        #[arg(value_enum)]
        image: Kind,
        /// The archive to write.
        #[arg(long)]
        out: PathBuf,
        /// The statically linked busybox to put in the image.
        #[arg(long, default_value = ::images::DEFAULT_BUSYBOX)]
        busybox: PathBuf,
        /// The image's name (default berth.dev/busybox:1 or berth.dev/pause:1).
        #[arg(long)]
        name: Option<String>,
    },
    /// Import archives into containerd's k8s.io namespace (the CRI plugin's) and unpack them.
    Import {
        #[arg(required = true)]
        archives: Vec<PathBuf>,
        /// containerd's socket.
        #[arg(long, default_value = "/var/lib/berth/agent/containerd/containerd.sock")]
        address: PathBuf,
    },
    /// Serve the archives in a directory as a read-only registry (OCI distribution API over plain
    /// HTTP): `berth.dev/busybox:1` in an archive is pulled as `ADDRESS/busybox:1`.
    Serve {
        /// The directory of OCI image-layout archives (`*.tar`).
        dir: PathBuf,
        /// Address to listen on; port 0 picks a free one. The first line printed names it.
        #[arg(long, default_value = "127.0.0.1:5000")]
        listen: std::net::SocketAddr,
        /// Require HTTP basic auth with these credentials (USER:PASSWORD).
        #[arg(long, value_name = "USER:PASSWORD")]
        basic_auth: Option<String>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum Kind {
    Busybox,
    Pause,
}

pub async fn run(command: ImagesCommand) -> anyhow::Result<()> {
    match command {
        ImagesCommand::Build { image, out, busybox, name } => {
            let builder = match image {
                Kind::Busybox => ::images::busybox_image(name.as_deref().unwrap_or(::images::BUSYBOX_IMAGE), &busybox)?,
                Kind::Pause => ::images::pause_image(name.as_deref().unwrap_or(::images::PAUSE_IMAGE), &busybox)?,
            };
            let archive = builder.write(&out)?;
            println!("{} {} -> {}", archive.reference, archive.manifest_digest, out.display());
        }
        ImagesCommand::Import { archives, address } => {
            for archive in archives {
                ::images::import(&address, &archive).await.with_context(|| format!("importing {}", archive.display()))?;
                let names = ::images::Archive::references(&archive)?;
                println!("imported {}: {}", archive.display(), names.join(", "));
            }
        }
        ImagesCommand::Serve { dir, listen, basic_auth } => {
            if basic_auth.as_deref().is_some_and(|c| !c.contains(':')) {
                anyhow::bail!("--basic-auth takes USER:PASSWORD");
            }
            let content = ::images::registry::Content::load_dir(&dir)?;
            let references = content.references();
            if references.is_empty() {
                anyhow::bail!("no images in {}", dir.display());
            }
            let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
            let address = listener.local_addr()?;
            println!("serving on http://{address}: {}", references.join(", "));
            let registry = std::sync::Arc::new(::images::registry::Registry::new(content, basic_auth.as_deref()));
            ::images::registry::serve(listener, registry).await;
        }
    }
    Ok(())
}
