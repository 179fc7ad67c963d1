/* A WAGI handler (a CGI program): answers by PATH_INFO.
 *   /hello     200, text/plain, X-Handler: wagi, "hello from wagi\n"
 *   /echo      201, the method, query, X-Test header and CONTENT_LENGTH as headers, the
 *              request body (stdin) echoed as the response body
 *   /env       200, every environment variable, one NAME=value per line
 *   /redirect  Location: /hello (no Status: the gateway makes it a 302)
 *   /trap      writes half a response, then executes `unreachable`
 *   /exit      exits with status 3
 *   /spin      writes "spinning" on stderr, then loops for ever (the gateway's timeout
 *              interrupts it)
 *   /garbage   output that is not a CGI response
 *   /grow      allocates 1 MiB blocks until malloc fails; answers how many it got
 *   anything else: 404
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern char **environ;
char *volatile last_block;

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

int main(void) {
    const char *path = env("PATH_INFO");
    if (strcmp(path, "/hello") == 0) {
        printf("Content-Type: text/plain\nX-Handler: wagi\n\nhello from wagi\n");
    } else if (strcmp(path, "/echo") == 0) {
        printf("Status: 201 Created\r\nContent-Type: application/octet-stream\r\n");
        printf("X-Method: %s\r\nX-Query: %s\r\nX-Test: %s\r\nX-Length: %s\r\n\r\n",
               env("REQUEST_METHOD"), env("QUERY_STRING"), env("HTTP_X_TEST"),
               env("CONTENT_LENGTH"));
        char buf[4096];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, n, stdout);
    } else if (strcmp(path, "/env") == 0) {
        printf("Content-Type: text/plain\n\n");
        for (char **e = environ; e && *e; e++) printf("%s\n", *e);
    } else if (strcmp(path, "/redirect") == 0) {
        printf("Location: /hello\n\n");
    } else if (strcmp(path, "/trap") == 0) {
        printf("Content-Type: text/plain\n\nhalf");
        fflush(stdout);
        __builtin_trap();
    } else if (strcmp(path, "/exit") == 0) {
        printf("Content-Type: text/plain\n\n");
        return 3;
    } else if (strcmp(path, "/spin") == 0) {
        fputs("spinning\n", stderr);  /* the test signals once it sees this */
        volatile unsigned long n = 0;
        for (;;) n++;
    } else if (strcmp(path, "/grow") == 0) {
        unsigned long mib = 0;
        char *block;
        while ((block = malloc(1 << 20)) != NULL) {  /* touched: the compiler keeps it */
            block[0] = (char)mib;
            last_block = block;
            mib++;
        }
        printf("Content-Type: text/plain\n\n%lu\n", mib);
    } else if (strcmp(path, "/garbage") == 0) {
        printf("this is not a header line\n");
    } else {
        printf("Status: 404 Not Found\nContent-Type: text/plain\n\nno route %s\n", path);
    }
    return 0;
}
