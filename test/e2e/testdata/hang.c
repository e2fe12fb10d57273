#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(void) {
	char b[32];
	int n = snprintf(b, sizeof b, "%d\n", getpid());
	int fd = open(getenv("OVT_STARTED"), O_WRONLY | O_APPEND | O_CREAT, 0644);
	if (fd >= 0) { write(fd, b, n); close(fd); }
	for (;;) pause();
}
