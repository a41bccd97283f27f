/* Links against the benchmark's libgit2.so: creates a repository with one
 * commit and prints the object ids, which bench.py recomputes with hashlib. */
#include <git2.h>
#include <stdio.h>
#include <string.h>

#define CHECK(x) do { if ((x) < 0) { const git_error *e = git_error_last(); \
    fprintf(stderr, "%s failed: %s\n", #x, e ? e->message : "?"); return 1; } } while (0)

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s repo-dir\n", argv[0]); return 2; }
    CHECK(git_libgit2_init());
    const char *data = "hello\n";
    git_repository *repo;
    CHECK(git_repository_init(&repo, argv[1], 0));
    git_oid blob, tree, commit;
    CHECK(git_blob_create_from_buffer(&blob, repo, data, strlen(data)));
    git_treebuilder *tb;
    CHECK(git_treebuilder_new(&tb, repo, NULL));
    CHECK(git_treebuilder_insert(NULL, tb, "hello.txt", &blob, GIT_FILEMODE_BLOB));
    CHECK(git_treebuilder_write(&tree, tb));
    git_tree *t;
    CHECK(git_tree_lookup(&t, repo, &tree));
    git_signature *sig;
    CHECK(git_signature_new(&sig, "A U Thor", "author@example.com", 1700000000, 0));
    CHECK(git_commit_create(&commit, repo, "HEAD", sig, sig, NULL, "benchmark commit\n", t, 0, NULL));
    git_commit *c;
    git_object *head;
    CHECK(git_revparse_single(&head, repo, "HEAD"));
    CHECK(git_commit_lookup(&c, repo, git_object_id(head)));
    char hex[GIT_OID_SHA1_HEXSIZE + 1];
    printf("blob %s\n", git_oid_tostr(hex, sizeof hex, &blob));
    printf("tree %s\n", git_oid_tostr(hex, sizeof hex, &tree));
    printf("commit %s\n", git_oid_tostr(hex, sizeof hex, &commit));
    printf("message %s", git_commit_message(c));
    git_commit_free(c);
    git_object_free(head);
    git_signature_free(sig);
    git_tree_free(t);
    git_treebuilder_free(tb);
    git_repository_free(repo);
    git_libgit2_shutdown();
    return 0;
}
