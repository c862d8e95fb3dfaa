//! VALIDATE: `qemu-img check` and booting an image until a login prompt.
