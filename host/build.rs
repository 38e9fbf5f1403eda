// `sqlx::migrate!` embeds host/migrations at compile time; a new or edited
// migration file must rebuild the crate, which cargo cannot know by itself.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
