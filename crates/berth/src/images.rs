//! `berth images`: builds the node's pause and busybox images and imports them into containerd.

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
    }
    Ok(())
}
