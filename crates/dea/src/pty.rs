//! The DEA's side of an interactive session's terminal: a pseudo-terminal pair from
//! `openpty`, whose slave becomes the stdio of `runc exec --tty` (runc then makes the
//! container's own pty and relays it), and whose master the session reads and writes
//! without blocking a thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use strato_core::messages::TerminalSize;
use tokio::io::unix::AsyncFd;

/// A new pty pair of `size`: (master, slave).
pub fn open(size: TerminalSize) -> io::Result<(PtyMaster, OwnedFd)> {
    let pair = nix::pty::openpty(Some(&winsize(size)), None).map_err(io::Error::from)?;
    Ok((PtyMaster::new(pair.master)?, pair.slave))
}

fn winsize(size: TerminalSize) -> nix::pty::Winsize {
    nix::pty::Winsize {
        ws_row: size.rows.max(1),
        ws_col: size.cols.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// The master side, non-blocking, readable and writable at the same time through `&self`.
pub struct PtyMaster {
    fd: AsyncFd<OwnedFd>,
}

impl PtyMaster {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
        // SAFETY: we own `fd` and neither replace nor close it while the AsyncFd holds it.
        let fd = unsafe { AsyncFd::register(fd)? };
        Ok(PtyMaster { fd })
    }

    /// Reads what the terminal printed; `Ok(0)` once every slave fd is closed (the kernel
    /// says `EIO` then).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_raw_fd(), buf).map_err(io::Error::from)
            }) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Types `data` into the terminal.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the terminal's size (the foreground process group of its session, if any,
    /// gets SIGWINCH from the kernel).
    pub fn resize(&self, size: TerminalSize) -> io::Result<()> {
        let ws = winsize(size);
        // SAFETY: TIOCSWINSZ reads one `struct winsize`, which `ws` is, from a valid pointer.
        let rc = unsafe {
            libc::ioctl(
                self.fd.get_ref().as_fd().as_raw_fd(),
                libc::TIOCSWINSZ,
                &ws as *const nix::pty::Winsize,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
