"""HTTP services in a container process: WAGI (a program run per request as a CGI script).

`switch.py` decides, in the daemon at Create, whether a container serves HTTP and how
(standard library only); `cgi.py` is the CGI gateway's protocol with no IO (request ->
environment, program output -> response); `handler.py` runs the program once per request in
a fresh instance of the already compiled code; `server.py` is the HTTP/1.1 server, its
threads, its request log and its drain on SIGTERM.
"""
