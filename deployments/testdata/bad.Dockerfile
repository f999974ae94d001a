# Must FAIL the Dockerfile lint (validate.sh checks that it does).
FROM golang
RUN apt-get install curl
ADD . /src
EXPOSE 99999
CMD go run ./cmd/tmc-runner worker
